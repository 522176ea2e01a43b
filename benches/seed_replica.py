#!/usr/bin/env python3
"""A replica of the seed's design, to measure as a baseline in the same run as login-server.

As the course design did: a main thread accepts gateway connections (listen backlog 5) and
starts a thread per connection; the handler does one recv(1024), parses the seed-form message,
opens a new TCP connection to the database server for the request, and answers with the seed's
codes and texts; the database server is thread-per-connection too, with plaintext passwords in
a dict. Only for benchmarks: it has every weakness login-server fixes.

    python3 benches/seed_replica.py 127.0.0.1:0     # prints "seed listening addr=HOST:PORT"
"""

import json
import socket
import sys
import threading

ACCOUNTS = {}
LOCK = threading.Lock()


def db_handler(conn):
    with conn:
        req = json.loads(conn.recv(1024).decode())
        with LOCK:
            if req["op"] == "login":
                stored = ACCOUNTS.get(req["username"])
                reply = {"found": stored is not None, "ok": stored == req["password"]}
            else:
                created = req["username"] not in ACCOUNTS
                if created:
                    ACCOUNTS[req["username"]] = req["password"]
                reply = {"created": created}
        conn.sendall(json.dumps(reply).encode())


def serve(listener, handler):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0"
    if ":" not in addr:
        sys.exit(f"{addr!r}: expected HOST:PORT (port 0 picks a free one)")
    host, port = addr.rsplit(":", 1)
    db = socket.socket()
    db.bind(("127.0.0.1", 0))
    db.listen(5)
    db_addr = db.getsockname()
    threading.Thread(target=serve, args=(db, db_handler), daemon=True).start()

    def handler(conn):
        with conn:
            try:
                req = json.loads(conn.recv(1024).decode())[0]
                op = req["OP"]
                with socket.create_connection(db_addr) as d:
                    d.sendall(json.dumps({"op": op, "username": req["username"],
                                          "password": req["password"]}).encode())
                    ans = json.loads(d.recv(1024).decode())
                if op == "login":
                    if not ans["found"]:
                        reply = {"code": 1, "info": "Failed for error username!"}
                    elif not ans["ok"]:
                        reply = {"code": 2, "info": "Failed for error password!"}
                    else:
                        reply = {"code": 3, "info": "success!"}
                else:
                    reply = {"code": 4, "info": "success"} if ans["created"] else {"code": 5, "info": "fail"}
                conn.sendall(json.dumps([reply]).encode())
            except Exception:
                pass  # the seed swallowed errors too

    listener = socket.socket()
    listener.bind((host, int(port)))
    listener.listen(5)
    print("seed listening addr=%s:%d" % listener.getsockname(), file=sys.stderr, flush=True)
    serve(listener, handler)


if __name__ == "__main__":
    main()

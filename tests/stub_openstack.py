"""One stand-in HTTP server for Nova and Placement, for the answers a healthy cloud cannot be
made to give on demand (a 5xx, malformed JSON, an older Nova, pages of hypervisors, thousands
of them, hostile documents, TLS with a certificate of our own). The check reaches it with
keystoneauth's `none` auth type and --os-endpoint (`argv()`), so no cloud is involved: this is
the mock the project rules allow, for what the real cloud cannot do.

A StubOpenStack answers each GET with `answer(path, version)` (path with its query string,
version the OpenStack-API-Version header or ""), which the subclass in each test file gives:
test_nova_hypervisors.py's StubCloud a generated set of hypervisors, test_faults_nova.py's
FakeCloud a scenario of hostile documents. Every request is recorded in `seen` (path, that header or None) and
`headers_seen` (path, the headers that matter)."""
import http.server
import threading


class StubOpenStack:
    def __init__(self, tls=None):
        stub = self
        self.seen = []
        self.headers_seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                version = self.headers.get("OpenStack-API-Version")
                stub.seen.append((self.path, version))
                stub.headers_seen.append((self.path, {k: self.headers.get(k) for k in (
                    "Accept", "OpenStack-API-Version", "X-OpenStack-Nova-API-Version")}))
                status, body = stub.answer(self.path, version or "")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v2.1"
        if tls:                         # (certificate file, key file): HTTPS
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = "https" + self.url[4:]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path, version):
        """(HTTP status, body bytes) for GET `path`."""
        raise NotImplementedError

    def argv(self, *args):
        """The check's arguments that send every service to this server, then `args`."""
        return ["--os-auth-type", "none", "--os-endpoint", self.url, *args]

    def reset(self):
        self.seen.clear()
        self.headers_seen.clear()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

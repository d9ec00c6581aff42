"""Image-service stand-in for the test cloud.  There is NO Glance here: this is the one stand-in
in an otherwise real cloud (keystone, placement and nova are the real PyPI services).  It answers
just enough of the Glance v2 image API for nova to accept an imageRef and build a server with the
fake compute driver: the version document, GET /v2/schemas/image, GET /v2/images (empty) and
GET /v2/images/<id>, where every id is the same small active raw image.  Nothing can be uploaded.
Usage: image_stub.py HOST PORT"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST, PORT = sys.argv[1], int(sys.argv[2])
BASE = f"http://{HOST}:{PORT}"
SCHEMA = {"name": "image", "additionalProperties": {"type": "string"}, "links": [],
          "properties": {"id": {"type": "string"}, "name": {"type": ["null", "string"]},
                         "status": {"type": "string"}, "tags": {"type": "array"}}}


def image(image_id):
    return {"id": image_id, "name": "nlc-image", "status": "active", "visibility": "public",
            "protected": False, "os_hidden": False, "size": 1048576, "virtual_size": 1048576,
            "min_disk": 0, "min_ram": 0, "disk_format": "raw", "container_format": "bare",
            "checksum": None, "os_hash_algo": None, "os_hash_value": None, "owner": None,
            "tags": [], "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
            "file": f"/v2/images/{image_id}/file", "self": f"/v2/images/{image_id}",
            "schema": "/v2/schemas/image"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path in ("", "/versions"):
            versions = {"versions": [{"id": "v2.9", "status": "CURRENT",
                                      "links": [{"rel": "self", "href": BASE + "/v2/"}]}]}
            return self._send(300 if path == "" else 200, versions)
        if path == "/v2/schemas/image":
            return self._send(200, SCHEMA)
        if path == "/v2/images":
            return self._send(200, {"images": [], "schema": "/v2/schemas/images"})
        if path.startswith("/v2/images/") and path.count("/") == 3:
            return self._send(200, image(path.split("/")[3]))
        return self._send(404, {"error": f"not served by the image stand-in: {path}"})

    def log_message(self, fmt, *args):
        sys.stderr.write("image-stub %s\n" % (fmt % args))


if __name__ == "__main__":
    ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()

"""Docker HEALTHCHECK for every voicequeue image: exit 0 when a local HTTP endpoint answers 2xx.

usage: healthcheck.py PORT_ENV DEFAULT_PORT PATH
The port is read from the same VQ_* variable the service listens on, so a changed port
needs no image rebuild. Standard library only: it runs in every image as is.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    port_env, default_port, path = argv[1:4]
    url = f"http://127.0.0.1:{os.environ.get(port_env) or default_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

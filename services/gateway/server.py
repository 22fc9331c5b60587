"""The gateway's HTTP server: uvicorn's, ending the live calls first when it is told to stop.

On SIGTERM uvicorn fails every open WebSocket at once (close code 1012, no message), so a caller would
lose the call with no reason and its reply jobs would run on. Here the listeners stop first, then each
call is ended (`calls.registry.end_all`: pending work cancelled, record closed, an error event and close
code 1012 sent), then uvicorn's own shutdown runs.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from services.gateway.calls import registry
from services.gateway.config import GatewaySettings


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: GatewaySettings) -> None:
        super().__init__(config)
        self.settings = settings

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new calls while the open ones end
        await registry.end_all(registry.SHUTDOWN, self.settings.call_shutdown_timeout_s)
        await super().shutdown(sockets)


def run(app: FastAPI, settings: GatewaySettings) -> None:
    config = uvicorn.Config(app, host=settings.gateway_host, port=settings.gateway_port, log_config=None,
                            access_log=False, ws_max_size=settings.ws_max_size_bytes)
    Server(config, settings).run()

"""crowdtk serve DIR: a Label Studio ML backend for a campaign (predictions from its counter, annotations as its
labels, retraining in the background)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import Log, run_command
from crowdtk.cli.options import PREDICTION, SESSION, Session
from crowdtk.errors import CrowdtkError
from crowdtk.predict_config import PredictConfig
from crowdtk.serve import TOKEN_ENV


class _ToLog(logging.Handler):
    """The server's log records as the command's stderr lines (debug ones with -v)."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.log.warn(message)
        elif record.levelno >= logging.INFO:
            self.log.info(message)
        else:
            self.log.debug(message)


@run_command("serve")
def command(
    folder: Annotated[Path, typer.Argument(help="The campaign folder ('campaign init -o DIR').", show_default=False)],
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 9090,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            help="Refuse requests without this token (Authorization: Token T or Bearer T, or Basic auth with T as "
            f"the password). [default: ${TOKEN_ENV}, else none]",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    predict: PredictConfig = PREDICTION.without("flip_average"),
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Answer Label Studio as an ML backend for the campaign in DIR, until Ctrl-C.

    Connect it in the Label Studio project (Settings > Model > Connect model, URL http://127.0.0.1:9090). /predict
    answers each task of a round's package with the regions and the current counter's suggested heads (the
    prediction 'export --prelabel' writes; the regions alone before a counter is trained). /webhook records every
    submitted annotation in DIR/round-K/labelstudio-annotations/; once each image of the round has one, 'campaign
    next DIR --package DIR/round-K/labelstudio-export.json --until-blocked' runs in the background (import, train,
    the next round's package), one run at a time. /health says the model version and what training is doing.
    """
    if not (folder / "campaign.json").is_file():
        raise CrowdtkError(f"{folder}: no campaign.json here", "start a campaign with crowdtk campaign init")
    log = session.log
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warn(f"listening on {host} without --token: anyone who reaches the port can send labels")
    handler = _ToLog(log)
    server_log = logging.getLogger("crowdtk.serve")
    server_log.addHandler(handler)
    server_log.setLevel(logging.DEBUG if session.log.verbose else logging.INFO)
    server_log.propagate = False
    from crowdtk.serve import make_server

    server = make_server(folder, host, port, token, predict)
    backend = server.backend
    try:
        log.info(
            f"serving campaign {backend.folder} at {server.url} (model version: {backend.model_version()}"
            f"{', token required' if server.token else ''}); in Label Studio: Settings > Model > Connect model, "
            f"URL {server.url}; Ctrl-C stops"
        )
        server.serve_forever()
    finally:
        server.server_close()
        backend.close()
        server_log.removeHandler(handler)

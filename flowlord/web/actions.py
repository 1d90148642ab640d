"""POST /api/refresh, /api/trigger, /api/backload, /api/pause, /api/resume and
/api/tasks/<task_no>/rerun, /cancel and /mark: operator actions over HTTP.

Behind a bearer token (401 without it, 403 when none is configured); the token's
name is who acts, in the audit trail. The request is checked here and its fires
are built by reading (flowlord/operations.py, the code `flowlord trigger` and
`backload` run); recording them, or rescanning, is asked of the daemon's loop,
the only writer in its process, and the answer waits for the outcome
(flowlord/commands.py): 503 when the loop did not get to it in time, in which
case nothing was changed.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

from flowlord import operate, operations
from flowlord.clock import parse_iso, rfc3339
from flowlord.commands import DaemonBusy
from flowlord.config import Config
from flowlord.errors import BadRequest, UsageError
from flowlord.loader import LoaderError
from flowlord.model import Fire
from flowlord.operate import Place
from flowlord.operations import Action
from flowlord.rules import BY_STEPS
from flowlord.store import Store, StoreError
from flowlord.tasks import BuildError, Context, meta_dir

T = TypeVar("T")
_ON_TASK = re.compile(r"/api/tasks/([0-9]{1,18})/(rerun|cancel|mark)")


class Loop(Protocol):
    """What the daemon's loop does for a request (flowlord.daemon.Daemon)."""

    def record(self, action: Action, fires: list[Fire]) -> list[Fire]:
        """The fires recorded through the ledger, as the action; those that were new."""

    def record_then(self, action: Action, fires: list[Fire],
                    then: Callable[[Place, list[Fire]], T]) -> tuple[list[Fire], T]:
        """`record`, then `then` (given the new fires) in the same turn of the loop."""

    def rescan(self, action: Action) -> list[str]:
        """A full rescan, as the action; the changes (`+key`, `~key`, `-key`)."""

    def act(self, action: Action, apply: Callable[[Place], T]) -> T:
        """`apply` run on the loop, with its database; its result."""


class Actions:
    def __init__(self, config: Config, tokens: dict[str, str], loop: Loop | None) -> None:
        self.config = config
        self.tokens = tokens  # name → token
        self.loop = loop

    def actor(self, authorization: str) -> str:
        """The name of the token the request bears; 401 without a known one, 403 when
        no token is configured. Every token is compared, in constant time."""
        if not self.tokens:
            raise BadRequest(HTTPStatus.FORBIDDEN, "POST is disabled: no http.token is set")
        given = authorization.removeprefix("Bearer ").strip().encode()
        names = [name for name, token in self.tokens.items()
                 if hmac.compare_digest(given, token.encode())]
        if not authorization.startswith("Bearer ") or not names:
            raise BadRequest(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <token> needed")
        return names[0]

    def post(self, path: str, authorization: str, body: bytes) -> tuple[HTTPStatus, Any]:
        """A POST of the JSON API: the bearer token names the actor."""
        actor = self.actor(authorization)
        try:
            fields = json.loads(body or b"{}")
        except ValueError as e:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return self.act(actor, path, fields)

    def act(self, actor: str, path: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        """The action at `path` (`/api/trigger`, `/api/tasks/12/rerun`, …) with its
        fields, done as `actor`: the one entry for every way in (the JSON API, the
        dashboard's forms)."""
        routes = {"/api/refresh": self.refresh, "/api/trigger": self.trigger,
                  "/api/backload": self.backload, "/api/pause": self.pause,
                  "/api/resume": self.resume}
        on_task = _ON_TASK.fullmatch(path)
        if path not in routes and not on_task:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path: {path}")
        try:
            if on_task:
                task_no, verb = int(on_task[1]), on_task[2]
                return {"rerun": self.rerun, "cancel": self.cancel, "mark": self.mark}[verb](
                    actor, task_no, fields)
            return routes[path](actor, fields)
        except UsageError as e:  # no such phase, a phase that cannot run
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(e)) from None
        except operate.Refused as e:  # a task not there, or not in a state for it
            raise BadRequest(HTTPStatus.CONFLICT, str(e)) from None
        except (DaemonBusy, LoaderError, StoreError) as e:
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None

    def pause(self, actor: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        target, label = self._target(fields)
        until, reason = _time(fields, "until", None), _text(fields, "reason", "")
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=self.config.zone())
        action = Action(actor, "pause", label, {
            "until": rfc3339(until) if until else None,
            "reason": reason}, retried=True)
        number = self._loop().act(action, lambda at: operate.pause(
            at.store, target, until, reason, at.ctx.created, action))
        return HTTPStatus.CREATED, {"pause_no": number, "target": label}

    def resume(self, actor: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        target, label = self._target(fields)
        action = Action(actor, "resume", label, {}, retried=True)
        ended = self._loop().act(action, lambda at: operate.resume(
            at.store, [target], at.ctx.created, action))
        return HTTPStatus.OK, {"ended": ended, "target": label}

    def _target(self, fields: dict[str, Any]) -> tuple[operate.Target, str]:
        store = Store(self.config.db, readonly=True)
        try:
            return operate.pause_target(
                store, task=_text(fields, "task", None), workflow=_text(fields, "workflow", None),
                file=_text(fields, "file", None), topic=_text(fields, "topic", None),
                everything=_flag(fields, "all"))
        finally:
            store.close()

    def rerun(self, actor: str, task_no: int, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        only = _flag(fields, "only")
        action = Action(actor, "rerun", str(task_no), {"tasks": [task_no], "only": only},
                        retried=True)
        reruns = self._loop().act(action, lambda at: operate.rerun(
            at.store, [task_no], only, at.ctx.created, action))
        return HTTPStatus.CREATED, {"tasks": [
            {"type": r.type, "job": r.job, "info": r.info, "attempt": r.attempt,
             "parent_no": r.parent_no, "no_children": r.no_children} for r in reruns]}

    def cancel(self, actor: str, task_no: int, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        action = Action(actor, "cancel", str(task_no), {"tasks": [task_no]}, retried=True)
        cancelled, _ = self._loop().act(action, lambda at: operate.cancel(
            at.store, [task_no], at.ctx.created, action))
        if not cancelled:
            raise operate.Refused(f"task {task_no} had already ended")
        return HTTPStatus.OK, {"cancelled": cancelled}

    def mark(self, actor: str, task_no: int, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        result, msg = _text(fields, "result"), _text(fields, "msg", "")
        if result not in ("complete", "error"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "result must be complete or error")
        action = Action(actor, "mark", str(task_no), {"result": result, "msg": msg},
                        retried=True)
        children = self._loop().act(action, lambda at: operate.mark(
            at.store, task_no, result, msg, at.ctx, action, at.children))
        return HTTPStatus.OK, {"task_no": task_no, "result": result,
                               "children": len(children)}

    def refresh(self, actor: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        changes = self._loop().rescan(Action(actor, "refresh", retried=True))
        return HTTPStatus.OK, {"changes": changes}

    def trigger(self, actor: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        chosen = self._phase(fields)
        time = _time(fields, "time", None)
        fire = operations.trigger_fire(chosen.phase, time, self._context())
        if fire.error:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, fire.error)
        action = Action(actor, "trigger", _target(chosen), {"time": fire.scheduled_for},
                        retried=True)
        return _created(self._loop().record(action, [fire]), chosen.warnings)

    def backload(self, actor: str, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        by = _text(fields, "by", None)
        if by is not None and by not in BY_STEPS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "by must be hour, day, week or month")
        start, end = _time(fields, "from"), _time(fields, "to")
        assert start is not None and end is not None
        chosen = self._phase(fields)
        try:
            fires = operations.backload_fires(chosen.phase, start, end, by, self._context())
        except BuildError as e:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from None
        reprocess = _text(fields, "reprocess", None)
        if reprocess not in (None, "failed", "all"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "reprocess must be failed or all")
        action = Action(actor, "backload", _target(chosen),
                        {"from": fields["from"], "to": fields["to"], "by": by}, retried=True)
        if reprocess is None:
            return _created(self._loop().record(action, fires), chosen.warnings)
        again = Action(actor, "rerun", _target(chosen), {"reprocess": reprocess}, retried=True)

        def rerun_fired_before(at: Place, new: list[Fire]) -> int:
            """The steps fired before run again: one turn of the loop with the backload,
            so the answer cannot be a 503 after the fires were recorded."""
            if len(new) == len(fires):
                return 0
            return len(operate.reprocess(at.store, fires, new, reprocess, at.ctx.created,
                                         again))
        new, reruns = self._loop().record_then(action, fires, rerun_fired_before)
        status, answer = _created(new, chosen.warnings)
        answer["reruns"] = reruns
        return (HTTPStatus.CREATED if reruns else status), answer

    def _phase(self, fields: dict[str, Any]) -> operations.Chosen:
        task, workflow = _text(fields, "task"), _text(fields, "workflow", None)
        store = Store(self.config.db, readonly=True)
        try:
            return operations.runnable_phase(store, task, workflow)
        finally:
            store.close()

    def _context(self) -> Context:
        return Context(self.config.zone(), meta_dir(self.config.workflows), datetime.now(UTC))

    def _loop(self) -> Loop:
        if self.loop is None:
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "no daemon to act")
        return self.loop


def _flag(fields: dict[str, Any], key: str) -> bool:
    value = fields.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must be true or false")
    return value


def _target(chosen: operations.Chosen) -> str:
    return f"{chosen.phase.file_path}: {chosen.phase.task}"


def _created(new: list[Fire], warnings: list[str]) -> tuple[HTTPStatus, Any]:
    """201 with the created tasks; 200 with none when every slot was fired before."""
    tasks = [json.loads(t.to_json()) for fire in new for t in fire.tasks]
    answer: dict[str, Any] = {"fires": len(new), "tasks": tasks}
    if warnings:  # several phases matched: which one was used
        answer["warnings"] = warnings
    return (HTTPStatus.CREATED if new else HTTPStatus.OK), answer


_REQUIRED = object()


def _text(fields: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    value = fields.get(key, default)
    if value is _REQUIRED:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is required")
    if value is not default and not isinstance(value, str):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must be a string")
    return value


def _time(fields: dict[str, Any], key: str, default: Any = _REQUIRED) -> datetime | None:
    text = _text(fields, key, default)
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is not an ISO 8601 time") from None

"""The playbook modules: each turns its (templated) arguments into transport calls and a result.

A module is a function ``(args, ctx) -> dict`` (the registered result: ``changed``, ``failed``,
``msg``, and for commands ``rc``, ``stdout``, ``stderr``, ``*_lines``). It talks to the host only
through ``ctx.transport()`` (a :class:`~torc_stress.cluster.transport.Transport`), so a
FakeTransport tests it completely. :data:`MODULES` declares each module's parameters, which the
playbook loader checks before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.cluster import templar
from torc_stress.cluster.transport import CmdResult, Transport
from torc_stress.errors import HostError, PlaybookError, UnreachableError

log = logging.getLogger(__name__)

Result = dict[str, Any]


@dataclass
class ModuleContext:
    """What a module may use: the host's transport, timeouts, env, vars and the playbook dir."""

    host: str
    transport: Callable[[], Transport]
    timeout: float = 600.0
    env: Mapping[str, str] | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    vars: Mapping[str, Any] = field(default_factory=dict)
    python: str = "python3"

    def run(self, command: str, *, timeout: float | None = None,
            stdin: str | None = None) -> CmdResult:
        """Run ``command`` on the host with the task's env and timeout."""
        return self.transport().run(command, timeout=timeout or self.timeout, env=self.env,
                                    stdin=stdin)


@dataclass(frozen=True)
class ModuleSpec:
    """A module's name, function and parameters (checked at playbook load time)."""

    name: str
    run: Callable[[dict[str, Any], ModuleContext], Result]
    params: frozenset[str]
    required: tuple[frozenset[str], ...] = ()  # each: at least one of these
    exclusive: tuple[frozenset[str], ...] = ()  # each: at most one of these
    free_form: bool = False  # accepts a plain string (shell, command)
    untemplated: frozenset[str] = frozenset()  # bare expressions, evaluated by the module


q = shlex.quote


def _in_dir(chdir: str | None, command: str) -> str:
    return f"cd {q(chdir)} || exit 1; {command}" if chdir else command


def command_result(res: CmdResult, cmd: Any) -> Result:
    """The registered result of a command: rc, stdout(_lines), stderr(_lines), changed, failed."""
    stdout, stderr = res.stdout.rstrip("\n"), res.stderr.rstrip("\n")
    result: Result = {
        "cmd": cmd, "rc": res.exit_code, "stdout": stdout, "stderr": stderr,
        "stdout_lines": stdout.splitlines(), "stderr_lines": stderr.splitlines(),
        "changed": True, "failed": res.exit_code != 0, "delta": f"{res.duration_s:.3f}",
    }
    result["msg"] = "non-zero return code" if res.exit_code else ""
    return result


def _guarded(args: dict[str, Any], ctx: ModuleContext, cmd: Any) -> Result | None:
    """Skip a command when ``creates`` exists or ``removes`` does not (result, or None to run)."""
    chdir = args.get("chdir")
    for key, runs_if_exists in (("creates", False), ("removes", True)):
        if args.get(key) is None:
            continue
        exists = ctx.run(_in_dir(chdir, f"test -e {q(str(args[key]))}")).exit_code == 0
        if exists != runs_if_exists:
            why = "exists" if exists else "does not exist"
            msg = f"Did not run command since '{args[key]}' {why}"
            return {"cmd": cmd, "rc": 0, "stdout": f"skipped, since {args[key]} {why}",
                    "stderr": "", "stdout_lines": [f"skipped, since {args[key]} {why}"],
                    "stderr_lines": [], "changed": False, "failed": False, "msg": msg}
    return None


def run_command(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``command``: run an argv without a shell (``cmd`` is split like a shell would)."""
    if args.get("argv") is not None:
        argv = [str(arg) for arg in args["argv"]]
    else:
        argv = shlex.split(str(args["cmd"]))
    if not argv:
        return {"changed": False, "failed": True, "msg": "no command given", "rc": 256}
    skipped = _guarded(args, ctx, argv)
    if skipped:
        return skipped
    res = ctx.run(_in_dir(args.get("chdir"), shlex.join(argv)), stdin=args.get("stdin"))
    return command_result(res, argv)


def run_shell(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``shell``: run a sh command line."""
    cmd = str(args["cmd"])
    skipped = _guarded(args, ctx, cmd)
    if skipped:
        return skipped
    res = ctx.run(_in_dir(args.get("chdir"), cmd), stdin=args.get("stdin"))
    return command_result(res, cmd)


def parse_mode(mode: Any) -> int | None:
    """Return a file mode as an int from ``"0644"``, ``"644"`` or an int (YAML 0644 is octal).

    Raises:
        PlaybookError: The mode is not octal digits.
    """
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        return mode
    try:
        return int(str(mode), 8)
    except ValueError as exc:
        raise PlaybookError(f"mode {mode!r} is not an octal file mode such as '0644'") from exc


def _stat_script(path: str) -> str:
    p = q(path)
    return (f"if [ -d {p} ]; then echo directory; elif [ -f {p} ]; then "
            f"sha256sum {p} | cut -d' ' -f1; stat -c %a {p}; else echo absent; fi")


def run_copy(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``copy``: put ``src`` (controller file) or ``content`` at ``dest`` unless identical."""
    data, src = _copy_data(args, ctx)
    dest, mode = str(args["dest"]), parse_mode(args.get("mode"))
    if dest.endswith("/") and src:
        dest += src.name
    checksum = hashlib.sha256(data).hexdigest()
    state = ctx.run(_stat_script(dest)).stdout.split()
    if state[:1] == ["directory"]:
        if not src:
            return {"changed": False, "failed": True, "dest": dest,
                    "msg": f"dest {dest} is a directory; give a file path with content"}
        dest = f"{dest.rstrip('/')}/{src.name}"
        state = ctx.run(_stat_script(dest)).stdout.split()
    result: Result = {"dest": dest, "checksum": checksum, "changed": False, "failed": False}
    if state[:1] == [checksum]:
        if mode is not None and state[1:2] != [format(mode, "o")]:
            res = ctx.run(f"chmod {format(mode, '04o')} {q(dest)}")
            return {**result, **_failed_if(res), "changed": True}
        return result
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "content"
        local.write_bytes(data)
        ctx.transport().put(local, dest, mode=mode)
    return {**result, "changed": True}


def _copy_data(args: dict[str, Any], ctx: ModuleContext) -> tuple[bytes, Path | None]:
    if args.get("content") is not None:
        content = args["content"]
        text = content if isinstance(content, str) else json.dumps(content)
        return text.encode(), None
    src = Path(str(args["src"])).expanduser()
    for candidate in (src, ctx.base_dir / "files" / src, ctx.base_dir / src):
        if candidate.is_file():
            return candidate.read_bytes(), candidate
    raise PlaybookError(f"copy: src {str(src)!r} not found (looked in {ctx.base_dir}/files and "
                        f"{ctx.base_dir})")


def _failed_if(res: CmdResult) -> Result:
    if res.exit_code == 0:
        return {"failed": False}
    return {"failed": True, "rc": res.exit_code, "msg": res.stderr.strip() or res.stdout.strip()}


def run_fetch(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``fetch``: get ``src`` into ``dest/<host>/<src>`` (or ``dest`` when ``flat``)."""
    src = str(args["src"])
    dest = _fetch_dest(args, ctx, src)
    res = ctx.run(f"sha256sum {q(src)}")
    if res.exit_code != 0:
        msg = f"the remote file does not exist or is not readable: {src}"
        failed = bool(args.get("fail_on_missing", True))
        return {"changed": False, "failed": failed, "msg": msg, "file": src}
    remote_sum = res.stdout.split()[0]
    result: Result = {"changed": False, "failed": False, "dest": str(dest), "checksum": remote_sum}
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == remote_sum:
        return result
    ctx.transport().get(src, dest)
    return {**result, "changed": True}


def _fetch_dest(args: dict[str, Any], ctx: ModuleContext, src: str) -> Path:
    dest = str(args["dest"])
    if args.get("flat"):
        path = dest + Path(src).name if dest.endswith("/") else dest
        base = Path(path).expanduser()
    else:
        base = Path(dest).expanduser() / ctx.host / src.lstrip("/")
    return base if base.is_absolute() else ctx.base_dir / base


_FILE_STATES: dict[str, str] = {
    "directory": "if [ -d {p} ]; then echo ok; else mkdir -p -- {p} && echo changed; fi",
    "absent": "if [ -e {p} ] || [ -L {p} ]; then rm -rf -- {p} && echo changed; else echo ok; fi",
    "touch": "touch -- {p} && echo changed",
    "file": "if [ -f {p} ]; then echo ok; else echo 'file {path} does not exist' >&2; exit 1; fi",
}
#: Without ``state``, Ansible keeps what is there (a file or a directory) and only sets the mode.
_CURRENT_STATE = ("if [ -e {p} ]; then echo ok; else echo 'file {path} does not exist' >&2; "
                  "exit 1; fi")


def run_file(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``file``: make ``path`` a directory, remove it, touch it or check it is a file; set mode.

    Without ``state`` the path must exist (file or directory) and only its mode is managed.
    """
    path, state = str(args["path"]), args.get("state")
    if state is not None and state not in _FILE_STATES:
        return {"changed": False, "failed": True, "path": path,
                "msg": f"state must be one of {', '.join(_FILE_STATES)}, got {state!r}"}
    template = _CURRENT_STATE if state is None else _FILE_STATES[state]
    script = template.format(p=q(path), path=path.replace("'", ""))
    mode = parse_mode(args.get("mode"))
    if mode is not None and state != "absent":
        octal = format(mode, "o")
        script += (f" && {{ [ \"$(stat -c %a {q(path)})\" = {octal} ] || "
                   f"{{ chmod {format(mode, '04o')} {q(path)} && echo changed; }}; }}")
    res = ctx.run(script)
    changed = "changed" in res.stdout.split()
    return {"path": path, "state": state, "changed": changed and res.exit_code == 0,
            **_failed_if(res)}


_WAIT_FOR = """\
import os, socket, sys, time
host, port, path, state, timeout, delay, sleep = sys.argv[1:8]
time.sleep(float(delay))
end = time.monotonic() + float(timeout)
def up():
    if path:
        return os.path.exists(path)
    try:
        socket.create_connection((host, int(port)), timeout=min(5.0, float(timeout) or 1)).close()
        return True
    except OSError:
        return False
want = state in ("started", "present")
while up() != want:
    if time.monotonic() >= end:
        sys.exit(1)
    time.sleep(float(sleep))
"""

WAIT_FOR_STATES = ("started", "stopped", "present", "absent")


def run_wait_for(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``wait_for``: on the target host, wait until a port answers or a path exists (or not)."""
    host, port, path = str(args.get("host", "127.0.0.1")), args.get("port"), args.get("path")
    state = str(args.get("state", "started"))
    timeout, delay = float(args.get("timeout", 300)), float(args.get("delay", 0))
    if state not in WAIT_FOR_STATES:
        return {"changed": False, "failed": True,
                "msg": f"state must be one of {', '.join(WAIT_FOR_STATES)}, got {state!r}"}
    argv = [ctx.python, "-c", _WAIT_FOR, host, str(port or 0), str(path or ""), state,
            f"{timeout:g}", f"{delay:g}", f"{float(args.get('sleep', 1)):g}"]
    res = ctx.run(shlex.join(argv), timeout=timeout + delay + 30)
    if res.exit_code == 0:
        return {"changed": False, "failed": False, "elapsed": round(res.duration_s, 3)}
    what = path if path else f"{host}:{port}"
    msg = args.get("msg") or f"Timeout when waiting for {what}"
    if res.exit_code != 1:
        msg = f"wait_for could not run ({ctx.python}): {res.stderr.strip()[-300:]}"
    return {"changed": False, "failed": True, "msg": msg, "elapsed": round(res.duration_s, 3)}


def run_debug(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``debug``: show ``msg`` or the value of ``var``."""
    if args.get("var") is not None:
        name = str(args["var"])
        return {"changed": False, "failed": False, name: templar.evaluate(name, ctx.vars)}
    return {"changed": False, "failed": False, "msg": args.get("msg", "Hello world!")}


def run_fail(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``fail``: fail the host with ``msg``."""
    msg = args.get("msg", "Failed as requested from task")
    return {"changed": False, "failed": True, "msg": msg}


def run_assert(args: dict[str, Any], ctx: ModuleContext) -> Result:
    """``assert``: every expression of ``that`` must be true."""
    that = args["that"]
    for expression in [that] if isinstance(that, (str, bool)) else that:
        if not templar.conditional(expression, ctx.vars):
            msg = args.get("fail_msg", args.get("msg", "Assertion failed"))
            return {"changed": False, "failed": True, "assertion": expression,
                    "evaluated_to": False, "msg": templar.template_value(msg, ctx.vars)}
    msg = args.get("success_msg", "All assertions passed")
    return {"changed": False, "failed": False, "msg": templar.template_value(msg, ctx.vars)}


_CMD = frozenset({"cmd", "chdir", "creates", "removes", "stdin"})
_SPECS = (
    ModuleSpec("command", run_command, _CMD | {"argv"}, (frozenset({"cmd", "argv"}),),
               (frozenset({"cmd", "argv"}),), free_form=True),
    ModuleSpec("shell", run_shell, _CMD, (frozenset({"cmd"}),), free_form=True),
    ModuleSpec("copy", run_copy, frozenset({"src", "content", "dest", "mode"}),
               (frozenset({"dest"}), frozenset({"src", "content"})),
               (frozenset({"src", "content"}),)),
    ModuleSpec("fetch", run_fetch, frozenset({"src", "dest", "flat", "fail_on_missing"}),
               (frozenset({"src"}), frozenset({"dest"}))),
    ModuleSpec("file", run_file, frozenset({"path", "state", "mode"}), (frozenset({"path"}),)),
    ModuleSpec("wait_for", run_wait_for, frozenset(
        {"host", "port", "path", "state", "timeout", "delay", "sleep", "msg"}),
        exclusive=(frozenset({"port", "path"}),)),
    ModuleSpec("debug", run_debug, frozenset({"msg", "var"}),
               exclusive=(frozenset({"msg", "var"}),), untemplated=frozenset({"var"})),
    ModuleSpec("fail", run_fail, frozenset({"msg"})),
    ModuleSpec("assert", run_assert, frozenset({"that", "fail_msg", "msg", "success_msg", "quiet"}),
               (frozenset({"that"}),), untemplated=frozenset({"that", "fail_msg", "msg",
                                                              "success_msg"})),
)

#: Modules by short name.
MODULES: dict[str, ModuleSpec] = {spec.name: spec for spec in _SPECS}
#: Short and ``ansible.builtin.`` names -> short name.
MODULE_NAMES: dict[str, str] = {
    **{name: name for name in MODULES}, **{f"ansible.builtin.{name}": name for name in MODULES}}

#: Modules that need no connection to the host (run on the controller).
CONTROLLER_ONLY = frozenset({"debug", "fail", "assert"})


def check_args(module: str, args: Mapping[str, Any]) -> str | None:
    """Return what is wrong with ``args`` for ``module`` (None if they are fine)."""
    spec = MODULES[module]
    unknown = sorted(set(args) - spec.params)
    if unknown:
        return (f"unknown argument(s) {', '.join(unknown)} for module {module} "
                f"(supported: {', '.join(sorted(spec.params))})")
    for group in spec.required:
        if not group & set(args):
            return f"module {module} needs {' or '.join(sorted(group))}"
    for group in spec.exclusive:
        if len(group & set(args)) > 1:
            return f"module {module}: {' and '.join(sorted(group))} are mutually exclusive"
    return None


def render_args(module: str, args: Mapping[str, Any], variables: Mapping[str, Any]
                ) -> dict[str, Any]:
    """Template ``args`` for ``module`` (bare-expression arguments are left for the module).

    Raises:
        PlaybookError: An undefined variable or a bad template.
    """
    untemplated = MODULES[module].untemplated
    return {key: value if key in untemplated else templar.template_value(value, variables)
            for key, value in args.items()}


def run_module(module: str, args: dict[str, Any], ctx: ModuleContext) -> Result:
    """Run ``module`` with already-templated ``args``; host errors become failed results.

    Raises:
        UnreachableError: The host cannot be reached (the executor marks it UNREACHABLE).
        PlaybookError: A templating error inside the module (assert, debug var).
    """
    try:
        result = MODULES[module].run(args, ctx)
    except UnreachableError:
        raise
    except HostError as exc:
        result = {"changed": False, "failed": True, "msg": str(exc).removeprefix(f"{exc.host}: ")}
    result.setdefault("changed", False)
    result.setdefault("failed", False)
    return result


def free_form_args(module: str, value: str) -> dict[str, Any]:
    """The dict form of a free-form ``shell``/``command`` string."""
    return {"cmd": value}


def is_sequence(value: Any) -> bool:
    """A list-like value (not a string)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))

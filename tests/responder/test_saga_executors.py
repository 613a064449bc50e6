"""The executors against real targets: a deployer on loopback that counts calls per
idempotency key, real programs, and what each can say about a key after a crash."""

from __future__ import annotations

from typing import Any

from responder.saga.catalog import Action, Catalog
from responder.saga.executors import idempotency_key, runner_for
from tests.responder.saga_target import Deployer

SCHEMA = {"type": "object", "required": ["service"],
          "properties": {"service": {"type": "string"}, "version": {"type": "string"}}}  # fmt: skip


def action(name: str, executor: dict[str, Any]) -> Action:
    return Catalog.model_validate({"actions": [{
        "name": name, "description": name, "params": SCHEMA, "risk": "low",
        "executor": executor, "compensation": "irreversible", "scope": {"services": ".+"},
    }]}).actions[0]  # fmt: skip


def deploy(url: str, **more: Any) -> Action:
    return action("deploy", {"kind": "http", "url": url + "/services/{service}/deploy",
                             "body": {"version": "{version}"},
                             "outcome_url": url + "/requests/{key}", **more})  # fmt: skip


async def test_http_carries_the_key_and_a_repeat_changes_nothing() -> None:
    deployer = Deployer({"checkout": "1.4.0"})
    async with deployer.running():
        rollback = deploy(deployer.url)
        runner = runner_for(rollback)
        params = {"service": "checkout", "version": "1.3.9"}
        key = idempotency_key("saga-1", 0, 1)
        first = await runner.run(rollback, params, key)
        again = await runner.run(rollback, params, key)
        asked = await runner.outcome(rollback, params, key)
        never = await runner.outcome(rollback, params, idempotency_key("saga-1", 1, 1))
    assert first.ok and first.certain and first.output == {
        "service": "checkout", "previous": "1.4.0", "now": "1.3.9"
    }  # fmt: skip
    assert again == first and asked == first  # the same answer, the deploy done once
    assert never is None  # a key it never saw: the step never ran
    assert deployer.calls[key] == 2 and deployer.versions["checkout"] == "1.3.9"


async def test_http_failures_say_whether_the_step_may_have_happened() -> None:
    deployer = Deployer({}, failing={"payments"})
    async with deployer.running():
        refused = await runner_for(deploy(deployer.url)).run(
            deploy(deployer.url), {"service": "payments", "version": "2"}, "k1"
        )
        path = await runner_for(deploy(deployer.url)).run(
            deploy(deployer.url), {"service": "x y?force=1#", "version": "2"}, "k2"
        )
        gone = deployer.url
    unreachable = await runner_for(deploy(gone)).run(
        deploy(gone), {"service": "checkout", "version": "2"}, "k3"
    )
    assert not refused.ok and refused.certain and refused.error.startswith("422: ")
    # A param is one path segment, quoted: it cannot turn into a query or a fragment.
    assert path.ok and path.output["service"] == "x y?force=1#"
    assert not unreachable.ok and unreachable.certain and "unreachable" in unreachable.error


async def test_a_command_runs_without_a_shell_and_is_killed_at_its_timeout() -> None:
    echo = action("echo", {"kind": "command", "program": "/bin/echo",
                           "args": ["restart", "{service}"], "rerun_safe": True})  # fmt: skip
    done = await runner_for(echo).run(echo, {"service": "checkout; rm -rf /"}, "k")
    assert done.ok and done.output == {"output": "restart checkout; rm -rf /\n"}  # one argument
    slow = action("slow", {"kind": "command", "program": "/bin/sleep", "args": ["30"],
                           "timeout_seconds": 0.2, "rerun_safe": False})  # fmt: skip
    killed = await runner_for(slow).run(slow, {"service": "x"}, "k")
    assert not killed.ok and not killed.certain and killed.error == "killed after 0.2s"
    false = action("false", {"kind": "command", "program": "/bin/false", "rerun_safe": True})
    failed = await runner_for(false).run(false, {"service": "x"}, "k")
    assert not failed.ok and failed.certain and failed.error == "exit status 1"
    missing = action("gone", {"kind": "command", "program": "/no/such", "rerun_safe": True})
    never = await runner_for(missing).run(missing, {"service": "x"}, "k")
    assert not never.ok and never.certain and "cannot run" in (never.error or "")
    asked = await runner_for(echo).outcome(echo, {"service": "x"}, "k")
    assert asked is not None and not asked.certain  # the action's rerun_safe decides


async def test_noop_records_what_it_would_do() -> None:
    note = action("note", {"kind": "noop"})
    done = await runner_for(note).run(note, {"service": "checkout"}, "k")
    assert done.ok and done.output == {
        "dry_run": True, "action": "note", "params": {"service": "checkout"}
    }  # fmt: skip
    assert await runner_for(note).outcome(note, {"service": "checkout"}, "k") is None

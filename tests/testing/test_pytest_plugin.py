"""The pytest plugin, as a user sees it: installed through the pytest11 entry point, nothing to import."""

from __future__ import annotations

pytest_plugins = ["pytester"]

# The user's own config; pytest-asyncio (installed here) warns without this setting.
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def test_fixtures_work_in_a_users_test_file(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        from fluent import sender
        from forwardd.testing import ForwardClient

        def test_tcp(forwardd_server):
            s = sender.FluentSender("app", host="127.0.0.1", port=forwardd_server.port)
            s.emit("login", {"user": "alice"})
            s.close()
            [event] = forwardd_server.wait_for(1)
            assert event.tag == "app.login"
            forwardd_server.assert_received("app.login", user="alice")

        def test_unix(forwardd_unix_server):
            s = sender.FluentSender("app", host="unix://" + forwardd_unix_server.unix_path)
            s.emit("x", {"n": 1})
            s.close()
            assert forwardd_unix_server.wait_for(1)[0].record == {"n": 1}

        def test_factory(forwardd_server_factory):
            a = forwardd_server_factory()
            b = forwardd_server_factory(shared_key="k")
            assert a.port != b.port
            with ForwardClient(port=b.port, shared_key="k") as c:
                c.message("secure", {"ok": True}, ack=True)
            b.assert_received("secure", ok=True)
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_a_missing_event_fails_with_a_clear_message(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        from forwardd.testing import ForwardClient

        def test_never_sent(forwardd_server):
            forwardd_server.wait_for(1, timeout=0.2)

        def test_wrong_record(forwardd_server):
            with ForwardClient(port=forwardd_server.port) as c:
                c.message("app.login", {"user": "alice"}, ack=True)
            forwardd_server.assert_received("app.login", user="bob")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected 1 events within 0.2s, got 0*",
            "*AssertionError: no event with tag='app.login' and {'user': 'bob'}; first events seen:*alice*",
        ]
    )

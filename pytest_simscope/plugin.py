"""The pytest entry point: options, configure/unconfigure, the marker and the fixture.

The plugin is enabled only when a regression name is given.  In an xdist worker it only
attaches what the controller needs to each report; the controller (or the only process)
publishes, with the classes of :mod:`pytest_simscope.session`, imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_simscope import hooks
from pytest_simscope.ci import detect_ci
from pytest_simscope.errors import SettingsError
from pytest_simscope.messages import DATA_ATTR, _clean_str, metadata_pairs
from pytest_simscope.settings import SPEC_BY_NAME, SPECS, Resolved, resolve

if TYPE_CHECKING:
    from pytest_simscope.session import SimscopePlugin

resolved_key = pytest.StashKey[Resolved]()
plugin_key: pytest.StashKey[SimscopePlugin] = pytest.StashKey()
metadata_key = pytest.StashKey[list[tuple[str, str]]]()
local_tests_key: pytest.StashKey[LocalTests] = pytest.StashKey()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simscope", "publish the run to Simscope (pytest-simscope)")
    for spec in SPECS:
        if spec.env_only:
            continue
        help_text = f"{spec.help} [ini: {spec.ini}, env: {spec.env}]"
        if spec.kind == "pairs":
            group.addoption(
                spec.flag, dest=spec.dest, action="append", default=None,
                metavar=spec.metavar or "KEY=VALUE", help=help_text,
            )
            parser.addini(spec.ini, help=spec.help, type="linelist", default=None)
        elif spec.kind == "bool":
            # A flag and its --simscope-no-* opposite, never an optional value: an
            # optional value would swallow the test path that follows the flag.
            group.addoption(
                spec.flag, dest=spec.dest, action="store_const", const="true", default=None,
                help=help_text,
            )
            group.addoption(
                spec.flag.replace("--simscope-", "--simscope-no-", 1), dest=spec.dest,
                action="store_const", const="false", default=None,
                help=f"Turn {spec.flag} off.",
            )
            parser.addini(spec.ini, help=spec.help, type="string", default=None)
        else:
            kwargs: dict[str, Any] = {}
            if spec.kind == "choice":
                kwargs["metavar"] = "{" + ",".join(spec.choices) + "}"
            else:
                kwargs["metavar"] = spec.metavar or "VALUE"
            group.addoption(spec.flag, dest=spec.dest, default=None, help=help_text, **kwargs)
            parser.addini(spec.ini, help=spec.help, type="string", default=None)


def _ini_value(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"bad value for ini key {name}: {exc}") from None


def resolve_settings(config: pytest.Config, *, flags_only: bool = False) -> Resolved:
    """Read every setting from the command line, the environment and the ini file."""
    cli: dict[str, Any] = {}
    ini: dict[str, Any] = {}
    for spec in SPECS:
        if spec.env_only:
            continue
        cli[spec.name] = config.getoption(spec.dest, default=None)
        if not flags_only:
            ini[spec.name] = _ini_value(config, spec.ini)
    if flags_only:
        return resolve(cli=cli, env={}, ini={})
    ini_path = str(config.inipath) if config.inipath else ""
    return resolve(cli=cli, env=os.environ, ini=ini, ini_path=ini_path, ci=detect_ci(os.environ))


def _regression_given(config: pytest.Config) -> bool:
    """Whether any source names a regression (the plugin is enabled only then)."""
    spec = SPEC_BY_NAME["regression"]
    try:
        ini = _ini_value(config, spec.ini)
    except SettingsError:
        return True  # let resolve_settings report it
    values = (config.getoption(spec.dest, default=None), os.environ.get(spec.env), ini)
    return any(isinstance(v, str) and v.strip() for v in values)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "simscope(category=None, testgroup=None, metadata=None, **pairs): Simscope job fields "
        "for this test (pytest-simscope)",
    )
    enabled = _regression_given(config)
    try:
        # Not asked for: change nothing, not even by refusing a stray SIMSCOPE_* value or
        # ini key; a bad --simscope-* flag the user typed is still an error.
        resolved = resolve_settings(config, flags_only=not enabled)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-simscope: {exc}") from None
    config.stash[resolved_key] = resolved
    if not resolved.settings.enabled:
        return
    if _is_worker(config):
        config.pluginmanager.register(WorkerSide(local_tests(config)), "simscope-worker")
        return
    # Only now: a run that does not publish never loads the publishing side.
    from pytest_simscope import session

    plugin = session.SimscopePlugin(config, resolved)
    config.stash[plugin_key] = plugin
    config.pluginmanager.register(plugin, "simscope-reporter")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(session.XdistHooks(plugin), "simscope-xdist")


@pytest.hookimpl
def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(plugin_key, None)
    if plugin is not None:
        plugin.shutdown()
        del config.stash[plugin_key]
        for name in ("simscope-reporter", "simscope-xdist", "simscope-tests"):
            registered = config.pluginmanager.get_plugin(name)
            if registered is not None:
                config.pluginmanager.unregister(registered)
        plugin.reraise_sigterm()


class JobMetadata:
    """What the ``simscope_metadata`` fixture gives a test: pairs added to its job."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def add(self, name: str, value: object) -> None:
        self._pairs.extend(metadata_pairs([(name, value)]))

    def __setitem__(self, name: str, value: object) -> None:
        self.add(name, value)

    def update(self, items: Any = None, **more: object) -> None:
        self._pairs.extend(metadata_pairs(items))
        self._pairs.extend(metadata_pairs(more))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)


@pytest.fixture
def simscope_metadata(request: pytest.FixtureRequest) -> JobMetadata:
    """Add ``[name, value]`` metadata to this test's Simscope job while it runs.

    ``simscope_metadata["transactions"] = 100`` or ``simscope_metadata.add(...)``.  Values
    become strings.  Works (and does nothing visible) when publishing is off.
    """
    node = request.node
    # A new list for each run of the test (pytest-rerunfailures runs it again).
    pairs: list[tuple[str, str]] = []
    node.stash[metadata_key] = pairs
    if isinstance(node, pytest.Item):
        tests = request.config.stash.get(local_tests_key, None)
        if tests is not None:  # publishing: the teardown report picks them up
            tests.with_metadata[node.nodeid] = node
    return JobMetadata(pairs)


def _has_marker(item: pytest.Item) -> bool:
    """Whether *item* or a node above it carries a ``simscope`` marker.

    What ``iter_markers`` finds, found without building the node chain and a generator
    for each test (most tests have no such marker).
    """
    node: Any = item
    while node is not None:
        for mark in node.own_markers:
            if mark.name == "simscope":
                return True
        node = node.parent
    return False


def _marker_data(item: pytest.Item) -> dict[str, Any]:
    if not _has_marker(item):
        return {}
    data: dict[str, Any] = {}
    pairs: list[tuple[str, str]] = []
    # Closest marker first; a farther one only fills what a closer one left unset.  A
    # marker met twice (a fixture that marks its test again on each rerun) counts once.
    seen: list[Any] = []
    for mark in item.iter_markers("simscope"):
        if mark in seen:
            continue
        seen.append(mark)
        kwargs = dict(mark.kwargs)
        for name in ("category", "testgroup"):
            value = kwargs.pop(name, None)
            if value is not None and name not in data:
                data[name] = _clean_str(value)
        meta = kwargs.pop("metadata", None)
        try:
            pairs[:0] = metadata_pairs(meta) + metadata_pairs(kwargs)
        except (TypeError, ValueError):
            pairs[:0] = [("simscope_marker_error", f"bad metadata in marker: {meta!r}"[:200])]
    if pairs:
        data["metadata"] = [list(p) for p in pairs]
    return data


class LocalTests:
    """What the reporter needs of the tests this process runs, without a hook call a test.

    Most tests carry no ``simscope`` marker and add no metadata: for them a setup or
    teardown report is answered by one lookup in the report's keywords (pytest puts every
    marker's name there, those added while the test runs included) and one in the tests
    that asked for the ``simscope_metadata`` fixture (it registers its test here).
    """

    def __init__(self) -> None:
        self.session: pytest.Session | None = None
        self._by_id: dict[str, pytest.Item] | None = None
        # Tests that asked for simscope_metadata and have not reported their teardown.
        self.with_metadata: dict[str, pytest.Item] = {}

    def _item(self, nodeid: str) -> pytest.Item | None:
        item = self.with_metadata.get(nodeid)
        if item is not None:
            return item
        items = getattr(self.session, "items", None) or ()
        if self._by_id is None:
            # Built when the first marked test reports, of the tests marked by then (a
            # few, not 100,000); an id collected twice (a duplicate argument) is one
            # function, with one set of markers.
            self._by_id = {}
            for found in items:
                if "simscope" in found.keywords:
                    self._by_id.setdefault(found.nodeid, found)
        item = self._by_id.get(nodeid)
        if item is None:
            # Marked while it ran (a fixture's applymarker): rare, so looked for.
            for found in items:
                if found.nodeid == nodeid:
                    item = self._by_id[nodeid] = found
                    break
        return item

    def data(self, report: pytest.TestReport) -> dict[str, Any] | None:
        """The marker's fields at setup, its metadata and the test's own at teardown
        (``None``: nothing, as for most tests)."""
        when = report.when
        if when != "setup" and when != "teardown":
            return None
        try:
            nodeid = report.nodeid
            marked = "simscope" in report.keywords
            if when == "setup":
                if not marked:
                    return None
                item = self._item(nodeid)
                if item is None:
                    return None
                fields = {k: v for k, v in _marker_data(item).items() if k != "metadata"}
                return fields or None
            added = self.with_metadata.pop(nodeid, None)
            if added is None and not marked:
                return None
            item = added or self._item(nodeid)
            if item is None:
                return None
            metadata = list(_marker_data(item).get("metadata", [])) if marked else []
            metadata += [list(p) for p in item.stash.get(metadata_key, None) or ()]
            return {"metadata": metadata} if metadata else None
        except Exception:  # a broken marker must not cost the result
            return None



def local_tests(config: pytest.Config) -> LocalTests:
    """The :class:`LocalTests` of this process (made on first use)."""
    found = config.stash.get(local_tests_key, None)
    if found is None:
        found = config.stash[local_tests_key] = LocalTests()
    return found


class WorkerSide:
    """In an xdist worker: attach data to reports (before xdist sends them), publish nothing.

    The setup and teardown reports of a test get the data the controller's reporter
    needs, JSON-safe, as an attribute xdist carries over.
    """

    def __init__(self, tests: LocalTests) -> None:
        self.tests = tests

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.tests.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.tests.data(report)
        if data:
            setattr(report, DATA_ATTR, data)

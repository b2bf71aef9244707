"""The plugin registry, against real distributions installed from tests/fixtures.

The fixture distributions are installed once per session with pip into a temporary directory;
each test that needs them puts that directory on ``sys.path`` only while it runs.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import plugin_fixtures

import loopkit
from loopkit import Fabric
from loopkit.plugins import (
    GROUP,
    KINDS,
    Plugin,
    PluginConflictError,
    PluginInfo,
    PluginLoadError,
    PluginNotFoundError,
    Registry,
    registry,
)
from loopkit.precision import Precision
from loopkit.strategy import SingleDeviceStrategy


@pytest.fixture(scope="session")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_fixtures.install(tmp_path_factory.getbasetemp() / "plugin-fixtures")


@pytest.fixture
def fixtures_installed(fixture_site: Path):
    """The fixture distributions are visible (sys.path, the global registry) in the test."""
    plugin_fixtures.forget_fixture_modules()
    with plugin_fixtures.on_sys_path(fixture_site):
        yield fixture_site


def _fixture_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in plugin_fixtures.PACKAGES)


def _core_registry() -> Registry:
    """Only the kernel's own entry points, read from its real metadata."""
    eps = [ep for ep in metadata.entry_points(group=GROUP) if ep.dist.metadata["Name"] == "loopkit"]
    return Registry(eps)


# -- discovery --------------------------------------------------------------------------------


def test_discovery_reads_metadata_and_imports_nothing(fixtures_installed):
    reg = Registry()
    names = reg.names()
    assert {"fixture-sub", "fixture-precision", "fixture-broken", "fixture-dup"} <= set(names)
    assert "fixture-sub" in reg
    assert "fixture-nothing" not in reg
    infos = {(i.name, i.distribution, i.version) for i in reg.infos()}
    assert ("fixture-sub", "loopkit-fixture-good", "1.0.0") in infos
    assert ("fixture-dup", "loopkit-fixture-dup-a", "2.0.0") in infos
    assert ("fixture-dup", "loopkit-fixture-dup-b", "3.0.0") in infos
    assert _fixture_modules() == []


def test_a_plugin_loads_when_named(fixtures_installed):
    reg = Registry()
    sub = reg.create("subscriber", "fixture-sub", start=3)
    assert type(sub).__module__ == "loopkit_fixture_good.subscriber"
    assert sub.backward_calls == 3
    assert sub.plugin_name == "fixture-sub"
    # Only the module of the plugin asked for was imported.
    assert _fixture_modules() == ["loopkit_fixture_good", "loopkit_fixture_good.subscriber"]


def test_installed_plugins_are_not_imported_by_import_or_default_fabric(fixture_site):
    code = textwrap.dedent(
        """
        import sys
        import loopkit
        fabric = loopkit.Fabric(accelerator="cpu")
        fabric.setup(__import__("torch").nn.Linear(2, 2))
        print(sorted(m for m in sys.modules if m.startswith("loopkit_")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=plugin_fixtures.env_with(fixture_site),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_kernel_registers_its_defaults_through_entry_points():
    reg = _core_registry()
    infos = {i.name: i for i in reg.infos()}
    assert set(infos) == {"32-true", "single_device", "cpu", "cuda", "mps"}
    assert {i.distribution for i in infos.values()} == {"loopkit"}
    assert {i.version for i in infos.values()} == {metadata.version("loopkit")}
    assert type(reg.create("precision", "32-true")) is Precision
    assert type(reg.create("strategy", "single_device")) is SingleDeviceStrategy
    assert reg.create("accelerator", "cpu").device_type == "cpu"
    assert reg.names("accelerator") == ["cpu", "cuda", "mps"]


# -- failures are clear and isolated ----------------------------------------------------------


def test_a_plugin_that_fails_to_import_names_distribution_entry_point_and_cause(
    fixtures_installed,
):
    reg = Registry()
    with pytest.raises(PluginLoadError) as info:
        reg.create("subscriber", "fixture-broken")
    message = str(info.value)
    assert "loopkit-fixture-broken 0.1.0" in message
    assert "fixture-broken = loopkit_fixture_broken.plugin:Broken" in message
    assert "ModuleNotFoundError" in message
    assert "loopkit_fixture_missing_dependency" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # The others still load, from the same registry.
    assert reg.create("subscriber", "fixture-sub").backward_calls == 0
    assert isinstance(reg.create("precision", "fixture-precision"), Precision)
    # The failure is remembered: the same error, no second import attempt.
    with pytest.raises(PluginLoadError) as again:
        reg.load("fixture-broken")
    assert again.value is info.value


def test_an_entry_point_that_names_no_plugin_class_is_a_load_error(fixtures_installed):
    with pytest.raises(PluginLoadError, match="is not a plugin") as info:
        Registry().load("fixture-not-a-plugin")
    assert "loopkit_fixture_broken.helpers:make_things" in str(info.value)
    assert "kind" in str(info.value)


def test_two_distributions_claiming_one_name_is_an_error_naming_both(fixtures_installed):
    reg = Registry()
    with pytest.raises(PluginConflictError) as info:
        reg.create("subscriber", "fixture-dup")
    message = str(info.value)
    assert "loopkit-fixture-dup-a 2.0.0" in message
    assert "loopkit-fixture-dup-b 3.0.0" in message
    assert "loopkit_fixture_dup_a:Dup" in message and "loopkit_fixture_dup_b:Dup" in message
    assert not any(m.startswith("loopkit_fixture_dup") for m in _fixture_modules())


def test_an_unknown_name_lists_the_installed_names_of_that_kind(fixtures_installed):
    with pytest.raises(PluginNotFoundError) as info:
        Registry().create("precision", "fixture-precisoin")
    message = str(info.value)
    assert "no precision plugin named 'fixture-precisoin'" in message
    assert "Did you mean 'fixture-precision'?" in message
    listed = message.split("Installed precision plugins: ")[1].split(".")[0].split(", ")
    assert {"32-true", "fixture-precision", "fixture-alias"} <= set(listed)
    assert "fixture-sub" not in listed and "cpu" not in listed
    assert "fixture-broken" in message.split("failing to load: ")[1]


def test_a_first_party_name_that_is_not_installed_says_what_to_install():
    with pytest.raises(PluginNotFoundError) as info:
        _core_registry().create("precision", "bf16-mixed")
    message = str(info.value)
    assert "Installed precision plugins: 32-true." in message
    assert "pip install loopkit-precision" in message


def test_asking_for_the_wrong_kind_says_what_the_plugin_is(fixtures_installed):
    with pytest.raises(PluginNotFoundError, match="'fixture-sub' is a subscriber plugin, not a"):
        Registry().create("precision", "fixture-sub")


def test_an_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown plugin kind 'precisions'"):
        _core_registry().create("precisions", "32-true")


def test_a_plugin_that_rejects_its_arguments_says_which_plugin(fixtures_installed):
    with pytest.raises(TypeError) as info:
        Registry().create("subscriber", "fixture-sub", begin=1)
    assert "fixture-sub" in "".join(info.value.__notes__)
    assert "loopkit_fixture_good.subscriber:CountingSubscriber" in "".join(info.value.__notes__)


# -- names, instances, state ------------------------------------------------------------------


def test_an_alias_keeps_the_class_canonical_name(fixtures_installed):
    reg = Registry()
    assert reg.create("precision", "fixture-alias").plugin_name == "fixture-precision"
    assert reg.create("precision", "fixture-precision").plugin_name == "fixture-precision"


def test_fabric_uses_a_precision_named_by_an_installed_distribution(fixtures_installed):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3)

    fabric = Fabric(accelerator="cpu", precision="fixture-precision")
    assert type(fabric.precision).__name__ == "DoubledLossPrecision"
    wrapped = fabric.setup(model)
    fabric.backward(wrapped(x).sum())
    reference(x).sum().backward()
    assert model.weight.grad is not None and reference.weight.grad is not None
    assert torch.equal(model.weight.grad, 2 * reference.weight.grad)


def test_a_subscriber_named_in_fabric_plugins_receives_hooks_and_keeps_state(fixtures_installed):
    fabric = Fabric(accelerator="cpu", plugins=["fixture-sub"])
    (sub,) = fabric.plugins
    assert sub.attached_to is fabric
    model = fabric.setup(torch.nn.Linear(2, 1))
    for _ in range(3):
        fabric.backward(model(torch.ones(1, 2)).sum())
    assert sub.backward_calls == 3
    state = sub.state_dict()
    fresh = Registry().create("subscriber", "fixture-sub")
    fresh.load_state_dict(state)
    assert fresh.backward_calls == 3


def test_a_logger_plugin_by_name(fixtures_installed):
    fabric = Fabric(accelerator="cpu", loggers="fixture-logger")
    fabric.log("loss", torch.tensor(0.5), step=2)
    assert fabric.logger.logged == [({"loss": 0.5}, 2)]


def test_instances_bypass_entry_points():
    class Counting(Plugin):
        def __init__(self) -> None:
            self.calls = 0

        def on_after_backward(self) -> None:
            self.calls += 1

    reg = Registry([])  # nothing installed at all
    mine = Precision()
    assert reg.resolve("precision", mine) is mine
    with pytest.raises(TypeError, match="passed as the strategy, but its kind is 'precision'"):
        reg.resolve("strategy", mine)
    plugin = Counting()
    fabric = Fabric(accelerator="cpu", plugins=[plugin])
    model = fabric.setup(torch.nn.Linear(2, 1))
    fabric.backward(model(torch.ones(1, 2)).sum())
    assert plugin.calls == 1
    assert plugin.plugin_name is None


def test_plugin_base_defaults():
    plugin = Plugin()
    assert plugin.kind == "subscriber"
    assert plugin.state_dict() == {}
    plugin.load_state_dict({})
    assert set(KINDS) == {"strategy", "precision", "accelerator", "checkpoint_io", "logger",
                          "subscriber"}  # fmt: skip


def test_given_entry_points_without_distribution():
    ep = metadata.EntryPoint("mine", "loopkit.precision:Precision", GROUP)
    reg = Registry([ep])
    assert reg.infos() == [PluginInfo("mine", "loopkit.precision:Precision", "<unknown>", "?")]
    assert type(reg.create("precision", "mine")) is Precision


def test_known_kinds_are_trusted_only_for_the_distribution_they_name():
    assert PluginInfo("tensorboard", "x:Y", "loopkit-logging", "1").known_kind == "logger"
    assert PluginInfo("tensorboard", "x:Y", "someone-else", "1").known_kind is None


def test_status_reports_every_plugin_and_how_it_loads(fixtures_installed):
    rows = {(r.info.name, r.info.distribution): r for r in Registry().status()}
    assert rows[("fixture-sub", "loopkit-fixture-good")].loads == "ok"
    assert rows[("fixture-sub", "loopkit-fixture-good")].kind == "subscriber"
    assert rows[("fixture-logger", "loopkit-fixture-good")].kind == "logger"
    assert rows[("fixture-broken", "loopkit-fixture-broken")].loads.startswith(
        "error: ModuleNotFoundError"
    )
    dup_a = rows[("fixture-dup", "loopkit-fixture-dup-a")]
    assert dup_a.loads.startswith("error: PluginConflictError")
    assert rows[("32-true", "loopkit")].loads == "ok"


def test_the_global_registry_is_cached_and_refreshable(fixture_site):
    before = registry()
    assert registry() is before
    assert "fixture-sub" not in before
    with plugin_fixtures.on_sys_path(fixture_site):
        assert "fixture-sub" in registry()
    assert "fixture-sub" not in registry()


def test_debug_trace_logs_plugin_resolution(fixtures_installed, capsys):
    loopkit.set_debug(True)
    try:
        Registry().create("subscriber", "fixture-sub")
    finally:
        loopkit.set_debug(False)
    err = capsys.readouterr().err
    assert "plugins discovered" in err
    assert "plugin loaded" in err and "name=fixture-sub" in err
    assert "plugin created" in err and "CountingSubscriber" in err

"""The hook bus: subscription, order, filters, argument passing, errors, tracing."""

from __future__ import annotations

import inspect
import warnings

import blinker
import pytest
import torch

import loopkit
from loopkit import Fabric
from loopkit.events import Bus, HookError, Subscription
from loopkit.hooks import FABRIC_FIRES, HOOKS, TRAINER_FIRES, default_hook


class Recorder:
    """Records (name, hook, kwargs) of every hook it receives."""

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log

    def on_train_start(self, trainer, module):
        self.log.append((self.name, "on_train_start", trainer, module))
        return self.name

    def on_train_batch_end(self, trainer, batch_idx):
        self.log.append((self.name, "on_train_batch_end", batch_idx))

    def should_optimizer_step(self, batch_idx):
        return batch_idx % 2 == 1

    def my_custom_hook(self, value):
        self.log.append((self.name, "my_custom_hook", value))
        return value * 2

    def helper(self):  # not a hook: never subscribed
        raise AssertionError("helper must not run")


# -- subscription -----------------------------------------------------------------------------


def test_connect_subscribes_each_method_named_as_a_declared_hook():
    log: list = []
    bus = Bus()
    rec = Recorder("a", log)
    sub = bus.connect(rec)
    assert set(sub.hooks) == {"on_train_start", "on_train_batch_end", "should_optimizer_step"}
    assert bus.call("on_train_start", trainer="T", module="M") == [(rec, "a")]
    assert log == [("a", "on_train_start", "T", "M")]
    assert bus.call("on_fit_start", trainer="T", module="M") == []
    assert bus.receivers("on_train_start") == (rec.on_train_start,)


def test_the_query_hook_should_optimizer_step_is_subscribed_by_name():
    bus = Bus(fires=TRAINER_FIRES)
    rec = Recorder("a", [])
    bus.connect(rec)
    answers = []
    for i in range(4):
        results = bus.call("should_optimizer_step", trainer=None, module=None, batch_idx=i)
        answers.append([answer for _, answer in results])
    assert answers == [[False], [True], [False], [True]]


def test_default_hook_methods_are_skipped_and_overrides_are_not():
    class Base:
        @default_hook
        def on_train_start(self, trainer):
            raise AssertionError("a default must not be dispatched")

        @default_hook
        def on_fit_start(self, trainer):
            raise AssertionError("a default must not be dispatched")

    class Child(Base):
        def on_fit_start(self, trainer):
            return "child"

    bus = Bus()
    child = Child()
    bus.connect(child)
    assert bus.call("on_train_start", trainer=1) == []
    assert bus.call("on_fit_start", trainer=1) == [(child, "child")]


def test_connect_a_function_to_one_hook_and_a_bound_method_reports_its_object():
    bus = Bus()
    seen = []
    bus.connect(lambda batch_idx: seen.append(batch_idx), "on_train_batch_end")
    rec = Recorder("r", [])
    bus.connect(rec.my_custom_hook, "on_train_batch_end")
    results = bus.call("on_train_batch_end", batch_idx=4, value=10)
    assert seen == [4]
    assert [owner for owner, _ in results][1] is rec
    assert results[1][1] == 20


def test_connect_rejects_what_it_cannot_subscribe():
    bus = Bus()
    with pytest.raises(TypeError, match="needs the name of the hook"):
        bus.connect(lambda: None)
    with pytest.raises(
        TypeError, match=r"got a class; connect an instance: connect\(Recorder\(\)\)"
    ):
        bus.connect(Recorder)
    with pytest.raises(TypeError, match="must be callable"):
        bus.connect(42, "on_train_start")
    with pytest.raises(ValueError, match="identifier"):
        bus.connect(print, "on train start")
    rec = Recorder("a", [])
    bus.connect(rec)
    with pytest.raises(ValueError, match="already connected"):
        bus.connect(rec)
    with pytest.raises(TypeError, match="priority must be an int"):
        bus.connect(lambda: None, "x", priority="high")  # type: ignore[arg-type]


def test_each_bus_has_its_own_namespace_never_the_global_one():
    one, two = Bus(), Bus()
    one.connect(lambda: "one", "on_train_start")
    assert two.call("on_train_start") == []
    assert not blinker.signal("on_train_start").receivers
    assert len(one._signals["on_train_start"].receivers) == 1


# -- order ------------------------------------------------------------------------------------


def test_order_is_priority_then_registration():
    order = []
    bus = Bus()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", -3), ("e", 5)]:
        bus.connect(lambda n=name: order.append(n), "on_fit_start", priority=priority)
    bus.call("on_fit_start")
    assert order == ["b", "e", "a", "c", "d"]


def test_an_object_keeps_its_registration_slot_for_custom_hooks():
    log: list = []
    bus = Bus()
    first, second = Recorder("first", log), Recorder("second", log)
    bus.connect(first)
    bus.connect(lambda value: log.append(("fn", "my_custom_hook", value)), "my_custom_hook")
    bus.connect(second)
    bus.call("my_custom_hook", value=1)
    assert [entry[0] for entry in log] == ["first", "fn", "second"]


def test_subscriptions_made_during_dispatch_apply_from_the_next_call():
    bus = Bus()
    calls = []

    def late():
        calls.append("late")

    def adder():
        calls.append("adder")
        bus.connect(late, "on_fit_start")

    bus.connect(adder, "on_fit_start", once=1)
    bus.call("on_fit_start")
    assert calls == ["adder"]
    bus.call("on_fit_start")
    assert calls == ["adder", "late"]


# -- filters ----------------------------------------------------------------------------------


def test_every_and_once_are_counted_by_the_bus_from_subscription():
    bus = Bus()
    runs: dict[str, list[int]] = {"every3": [], "once2": [], "late_every2": [], "all": []}
    bus.connect(lambda batch_idx: runs["every3"].append(batch_idx), "on_train_batch_end", every=3)
    bus.connect(lambda batch_idx: runs["once2"].append(batch_idx), "on_train_batch_end", once=2)
    bus.connect(lambda batch_idx: runs["all"].append(batch_idx), "on_train_batch_end")
    for i in range(1, 5):
        bus.call("on_train_batch_end", batch_idx=i)
    bus.connect(lambda batch_idx: runs["late_every2"].append(batch_idx), "on_train_batch_end",
                every=2)  # fmt: skip
    for i in range(5, 10):
        bus.call("on_train_batch_end", batch_idx=i)
    assert runs["every3"] == [3, 6, 9]
    assert runs["once2"] == [2]
    assert runs["all"] == list(range(1, 10))
    assert runs["late_every2"] == [6, 8]


def test_filters_of_an_object_apply_to_its_custom_hooks_too():
    log: list = []
    bus = Bus()
    bus.connect(Recorder("r", log), every=2)
    results = [bus.call("my_custom_hook", value=v) for v in range(1, 6)]
    assert [entry[2] for entry in log] == [2, 4]
    assert [len(r) for r in results] == [0, 1, 0, 1, 0]


def test_bad_filters_are_rejected():
    bus = Bus()
    for kwargs in ({"every": 0}, {"once": -1}, {"every": 1.5}, {"once": True}):
        with pytest.raises(ValueError, match="must be a positive int"):
            bus.connect(print, "on_fit_start", **kwargs)
    with pytest.raises(ValueError, match="not both"):
        bus.connect(print, "on_fit_start", every=2, once=2)


# -- removal ----------------------------------------------------------------------------------


def test_a_subscription_is_a_removable_handle_and_a_context_manager():
    log: list = []
    bus = Bus()
    rec = Recorder("r", log)
    with bus.connect(rec) as sub:
        assert isinstance(sub, Subscription) and sub.active
        bus.call("my_custom_hook", value=1)
        assert "my_custom_hook" in sub.hooks
    assert not sub.active
    bus.call("my_custom_hook", value=2)
    bus.call("on_train_start", trainer=1, module=2)
    assert log == [("r", "my_custom_hook", 1)]
    sub.remove()  # a second removal does nothing
    bus.connect(rec)  # and the object can be connected again
    bus.call("my_custom_hook", value=3)
    assert log[-1] == ("r", "my_custom_hook", 3)


def test_disconnect_removes_every_subscription_of_a_target():
    log: list = []
    bus = Bus()
    rec = Recorder("r", log)
    bus.connect(rec)
    bus.connect(rec.my_custom_hook, "on_fit_start")
    fn_handle = bus.connect(print, "on_fit_end")
    bus.disconnect(rec)
    assert bus.call("on_fit_start", value=1) == []
    assert bus.call("my_custom_hook", value=1) == []
    assert bus.receivers("on_fit_end") == (print,)
    bus.disconnect(print)
    assert bus.receivers("on_fit_end") == ()
    fn_handle.remove()  # already gone: nothing happens


# -- arguments --------------------------------------------------------------------------------


def test_custom_names_reach_any_connected_object_with_that_method():
    log: list = []
    bus = Bus()
    a, b = Recorder("a", log), Recorder("b", log)
    bus.connect(a)
    assert bus.call("my_custom_hook", value=2) == [(a, 4)]
    bus.connect(b)  # connected after the name was first resolved
    assert bus.call("my_custom_hook", value=3) == [(a, 6), (b, 6)]
    assert bus.call("nobody_has_this") == []
    assert bus.call("helper_that_nobody_has", value=1) == []


def test_each_receiver_gets_only_the_keywords_its_signature_accepts():
    got = {}

    class CB:
        def on_fit_start(self, trainer):
            got["named"] = trainer

        def on_fit_end(self, trainer, *, tag="default", **rest):
            got["rest"] = (trainer, tag, rest)

        def on_train_end(self, pl_module, extra=None):
            got["alias"] = (pl_module, extra)

        def on_train_start(self, trainer, /, module):
            got["positional_only"] = (trainer, module)

        def on_validation_start(self, *args, **kwargs):
            got["var"] = (args, kwargs)

    bus = Bus(fires=TRAINER_FIRES)
    bus.connect(CB())
    bus.call("on_fit_start", trainer="T", module="M", unused=1)
    bus.call("on_fit_end", trainer="T", module="M", more=3)
    bus.call("on_train_end", trainer="T", module="M")
    bus.call("on_train_start", trainer="T", module="M")
    bus.call("on_validation_start", trainer="T", module="M")
    assert got["named"] == "T"
    assert got["rest"] == ("T", "default", {"module": "M", "more": 3})
    assert got["alias"] == ("M", None)
    assert got["positional_only"] == ("T", "M")
    assert got["var"] == ((), {"trainer": "T", "module": "M"})
    # The receiver's own name wins over the alias when the caller passes it.
    bus.call("on_train_end", module="M", pl_module="P", extra=5)
    assert got["alias"] == ("P", 5)


def test_a_kwargs_receiver_with_an_aliased_parameter_gets_both():
    got = []

    def receiver(pl_module, **kwargs):
        got.append((pl_module, kwargs))

    bus = Bus()
    bus.connect(receiver, "on_fit_start")
    bus.call("on_fit_start", trainer=1, module=2)
    assert got == [(2, {"trainer": 1, "module": 2})]


def test_kwargs_receivers_with_positional_only_or_required_parameters():
    bus = Bus()
    bus.connect(lambda trainer, /, **rest: (trainer, sorted(rest)), "my_hook")
    assert bus.call("my_hook", trainer="T", batch_idx=1) == [
        (bus.receivers("my_hook")[0], ("T", ["batch_idx"]))
    ]

    def needs_loss(loss, **rest):
        return loss

    bus.connect(needs_loss, "other_hook")
    with pytest.raises(HookError, match=r"needs_loss requires 'loss'.*hook 'other_hook'"):
        bus.call("other_hook", trainer="T")


def test_positional_arguments_are_passed_to_every_receiver():
    bus = Bus()
    bus.connect(lambda a, b=0, *, c=0: (a, b, c), "my_hook")
    bus.connect(lambda *args, c=0: (args, c), "my_hook")
    assert [r for _, r in bus.call("my_hook", 1, 2, c=3)] == [(1, 2, 3), ((1, 2), 3)]
    assert [r for _, r in bus.call("my_hook", 1, b=5)] == [(1, 5, 0), ((1,), 0)]


def test_call_returns_owner_result_pairs_in_call_order():
    bus = Bus()
    a, b = Recorder("a", []), Recorder("b", [])
    bus.connect(a)
    bus.connect(b, priority=1)
    assert bus.call("on_train_start", trainer=0, module=0) == [(b, "b"), (a, "a")]


def test_signatures_are_inspected_when_connected_never_per_call(monkeypatch):
    real = inspect.signature
    count = 0

    def counting(fn, *args, **kwargs):
        nonlocal count
        count += 1
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    bus = Bus()
    log: list = []
    bus.connect(Recorder("a", log))
    bus.connect(lambda trainer: None, "on_train_start")
    after_connect = count
    assert after_connect == 4  # three declared hooks of Recorder, one function
    for i in range(50):
        bus.call("on_train_start", trainer=i, module=i)
        bus.call("my_custom_hook", value=i)  # resolved on the first call only
    assert count == after_connect + 1
    assert len(log) == 100


# -- validation and errors --------------------------------------------------------------------


class EpochEnd:
    """The callback of reference document 003, section ``call``."""

    def on_train_start(self):
        self.started = True

    def on_train_epoch_end(self, model, results):
        self.seen = (model, results)


def test_the_fabric_call_example_works_as_written():
    callback = EpochEnd()
    fabric = Fabric(accelerator="cpu", callbacks=[callback])
    model = torch.nn.Linear(1, 1)
    fabric.call("on_train_start")
    fabric.call("on_train_epoch_end", model=model, results={"loss": 1.0})
    fabric.call("undefined")
    assert callback.started
    assert callback.seen == (model, {"loss": 1.0})


def test_a_receiver_the_loop_cannot_feed_is_an_error_at_connect_time():
    bus = Bus(fires=TRAINER_FIRES)
    with pytest.raises(HookError) as info:
        bus.connect(EpochEnd())
    message = str(info.value)
    assert "EpochEnd.on_train_epoch_end" in message
    assert "'model', 'results'" in message
    assert "(trainer, module)" in message
    # Nothing of the rejected object was subscribed.
    assert bus.receivers("on_train_start") == ()


def test_declaring_fired_hooks_later_validates_current_receivers():
    bus = Bus()
    bus.connect(EpochEnd())
    bus.add_fired(FABRIC_FIRES)  # EpochEnd has none of these
    with pytest.raises(HookError, match=r"EpochEnd\.on_train_epoch_end"):
        bus.add_fired(["on_train_epoch_end"])
    with pytest.raises(ValueError, match=r"not declared in loopkit\.hooks: my_hook"):
        bus.add_fired(["my_hook"])


def test_a_call_missing_a_required_argument_names_the_receiver_and_the_hook():
    bus = Bus()
    bus.connect(EpochEnd())
    with pytest.raises(HookError) as info:
        bus.call("on_train_epoch_end", model=1)
    message = str(info.value)
    assert "EpochEnd.on_train_epoch_end requires 'results'" in message
    assert "hook 'on_train_epoch_end'" in message
    assert "it passed model" in message
    bus.connect(lambda value: value, "my_hook")
    with pytest.raises(HookError, match=r"<lambda> requires 'value'.*hook 'my_hook'"):
        bus.call("my_hook", other=1)
    with pytest.raises(HookError, match="it passed no keyword arguments"):
        bus.call("my_hook")


def test_a_receiver_exception_propagates_unchanged_with_a_note():
    class Boom:
        def on_fit_start(self):
            raise RuntimeError("boom")

        def lookup(self, key):
            return {}[key]  # a KeyError of the receiver's own

        def typed(self, value):
            return len(value)  # a TypeError of the receiver's own

    bus = Bus()
    bus.connect(Boom())
    with pytest.raises(RuntimeError, match="boom") as info:
        bus.call("on_fit_start")
    assert info.value.__notes__ == [
        "raised by Boom.on_fit_start while handling hook 'on_fit_start'"
    ]
    with pytest.raises(KeyError) as key_info:
        bus.call("lookup", key="x")
    assert not isinstance(key_info.value, HookError)
    assert "raised by Boom.lookup" in key_info.value.__notes__[0]
    with pytest.raises(TypeError) as type_info:
        bus.call("typed", value=3)
    assert not isinstance(type_info.value, HookError)
    assert "object of type 'int' has no len()" in str(type_info.value)
    # The general path (positional arguments) notes the same way.
    with pytest.raises(TypeError) as positional:
        bus.call("typed", 3)
    assert "raised by Boom.typed while handling hook 'typed'" in positional.value.__notes__


def test_nested_hooks_add_one_note_per_level():
    bus = Bus()
    bus.connect(lambda: bus.call("inner"), "outer")

    def inner():
        raise ValueError("deep")

    bus.connect(inner, "inner")
    with pytest.raises(ValueError) as info:
        bus.call("outer")
    assert [n.split(" while ")[1] for n in info.value.__notes__] == [
        "handling hook 'inner'",
        "handling hook 'outer'",
    ]


def test_a_near_miss_of_a_declared_hook_warns_with_the_nearest_name():
    class Typo:
        def on_train_epoch_ends(self):
            pass

        def on_trian_start(self):
            pass

        def on_my_own_event(self):  # far from every declared hook: no warning
            pass

    with pytest.warns(UserWarning) as record:
        Bus().connect(Typo())
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert (
        "Typo.on_train_epoch_ends is not a loopkit hook: did you mean 'on_train_epoch_end'?"
        in (messages[0])
    )
    assert "Typo.on_trian_start" in messages[1] and "'on_train_start'" in messages[1]
    with pytest.warns(UserWarning, match="did you mean 'on_fit_end'"):
        Bus().connect(print, "on_fit_ned")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bus().connect(print, "on_my_own_event")


# -- tracing ----------------------------------------------------------------------------------


def test_the_debug_trace_logs_each_hook_with_receivers_and_time(capsys):
    bus = Bus()
    bus.connect(Recorder("r", []))
    bus.call("on_train_start", trainer=1, module=2)
    assert capsys.readouterr().err == ""  # quiet by default
    loopkit.set_debug(True)
    try:
        results = bus.call("on_train_start", trainer=1, module=2)
        bus.call("on_nobody_listens")
    finally:
        loopkit.set_debug(False)
    assert results == [(bus.receivers("on_train_start")[0].__self__, "r")]
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert "hook=on_train_start" in lines[0]
    assert "receivers=['Recorder.on_train_start']" in lines[0]
    assert "us=" in lines[0]
    assert "hook=on_nobody_listens" in lines[1] and "receivers=[]" in lines[1]


def test_every_declared_hook_can_be_fired_with_its_declared_parameters():
    bus = Bus(fires=TRAINER_FIRES)
    seen = {}

    def recorder(name):
        def receive(**kwargs):
            seen[name] = sorted(kwargs)

        return receive

    for name in HOOKS:
        bus.connect(recorder(name), name)
    for name, spec in HOOKS.items():
        bus.call(name, **dict.fromkeys(spec.params))
    assert seen == {name: sorted(spec.params) for name, spec in HOOKS.items()}

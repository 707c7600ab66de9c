import math

import pytest
import torch
from torch import nn

import timeshift
from timeshift.engine.metrics import classification_report, topk_accuracy
from timeshift.engine.optim import build_optimizer, build_scheduler, param_groups


def _model(**kwargs):
    return timeshift.create_model("tsm_resnet_tiny", num_classes=5, num_segments=4, **kwargs)


def _group(groups, name):
    return next(g for g in groups if g.name == name)


def test_reference_parameter_groups():
    model = _model()
    groups = param_groups(model, fc_lr5=True)
    by_name = {g.name: g for g in groups}
    assert by_name["first_conv_weight"].params == [model.backbone.conv1.weight]
    assert (by_name["first_conv_weight"].lr_mult, by_name["first_conv_weight"].decay_mult) == (1, 1)
    assert by_name["fc_weight"].params == [model.fc.weight]
    assert (by_name["fc_weight"].lr_mult, by_name["fc_bias"].lr_mult) == (5, 10)
    assert by_name["fc_bias"].decay_mult == 0
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in by_name["norm"].params} == {id(p) for p in norms}
    assert by_name["norm"].decay_mult == 0
    # every trainable parameter in exactly one group
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    plain = {g.name: g for g in param_groups(model, fc_lr5=False)}
    assert (plain["fc_weight"].lr_mult, plain["fc_bias"].lr_mult) == (1, 2)


def test_partial_bn_parameters_left_out():
    model = _model(partial_bn=True)
    norm = _group(param_groups(model), "norm")
    assert len(norm.params) == 2  # weight and bias of the first BN only


def test_optimizer_applies_multipliers():
    opt = build_optimizer(_model(), lr=0.1, weight_decay=1e-4, fc_lr5=True)
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert settings["fc_weight"] == (pytest.approx(0.5), 1e-4)
    assert settings["fc_bias"] == (pytest.approx(1.0), 0.0)
    assert settings["norm"] == (0.1, 0.0)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(_model(), name="lamb", lr=0.1)


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_with_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, kind="step", epochs=6, steps_per_epoch=2, milestones=[2, 4],
                            gamma=0.1, warmup_epochs=1, warmup_factor=0.1)  # fmt: skip
    lrs = _lrs(sched, opt, 12)
    expected = [0.1, 0.55, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01]
    assert lrs == pytest.approx(expected)


def test_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, kind="cosine", epochs=4, steps_per_epoch=5)
    lrs = _lrs(sched, opt, 20)
    assert lrs[0] == pytest.approx(2.0)
    assert lrs[10] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs == sorted(lrs, reverse=True)
    with pytest.raises(ValueError, match="schedule"):
        build_scheduler(opt, kind="linear", epochs=1, steps_per_epoch=1)


def test_metrics_on_known_inputs():
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 1, 1])
    acc = topk_accuracy(scores, labels, (1, 2))
    assert acc == {1: 0.5, 2: 1.0}
    report = classification_report(scores, labels, num_classes=3)
    assert report["top1"] == 0.5
    # class 0: 1/1, class 1: 1/3, class 2: no samples (left out of the mean)
    assert report["mean_class_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert report["confusion"].tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert report["support"] == [1, 3, 0]
    assert math.isnan(report["per_class"][2])


def test_step_schedule_does_not_depend_on_the_run_length():
    """Why resuming a step-schedule run with more epochs continues it exactly, while a cosine
    run's other length is refused (timeshift.engine.config.check_resume_config)."""

    def lrs(kind, epochs):
        model = _model()
        opt = build_optimizer(model, lr=0.1)
        sched = build_scheduler(
            opt, kind=kind, epochs=epochs, steps_per_epoch=3, milestones=[1, 2], warmup_epochs=0.5
        )
        out = []
        for _ in range(6):  # the first two epochs
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("step", 2) == lrs("step", 5)
    assert lrs("cosine", 2) != pytest.approx(lrs("cosine", 5))


def test_flow_first_conv_trains_faster():
    # reference get_optim_policies: first conv weight lr x5 (decay x1), bias x10 (no decay) for
    # Flow; x1 / x2 for RGB; every other group as RGB
    flow = _model(modality="flow")
    groups = {g.name: g for g in param_groups(flow, fc_lr5=True)}
    first = groups["first_conv_weight"]
    assert first.params == [flow.backbone.conv1.weight] and first.params[0].shape[1] == 10
    assert (first.lr_mult, first.decay_mult) == (5, 1)
    rgb = {g.name: g for g in param_groups(_model(), fc_lr5=True)}
    for name in ("normal_weight", "norm", "fc_weight", "fc_bias"):
        assert (groups[name].lr_mult, groups[name].decay_mult) == (
            rgb[name].lr_mult,
            rgb[name].decay_mult,
        )
    opt = build_optimizer(flow, lr=0.01, weight_decay=1e-4)
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert settings["first_conv_weight"] == (pytest.approx(0.05), 1e-4)
    assert settings["normal_weight"] == (0.01, 1e-4)


def test_flow_first_conv_bias_lr_x10():
    # a network whose first conv has a bias (the reference's BNInception): bias x10, no decay;
    # the rule picks the first conv met, whatever wraps it
    net = nn.Sequential(nn.Sequential(nn.Conv2d(10, 4, 3), nn.ReLU()), nn.Conv2d(4, 4, 1))
    groups = {g.name: g for g in param_groups(net, modality="flow")}
    assert groups["first_conv_bias"].params == [net[0][0].bias]
    assert (groups["first_conv_bias"].lr_mult, groups["first_conv_bias"].decay_mult) == (10, 0)
    assert groups["normal_bias"].params == [net[1].bias]
    assert groups["normal_bias"].lr_mult == 2
    rgb = {g.name: g for g in param_groups(net)}
    assert (rgb["first_conv_weight"].lr_mult, rgb["first_conv_bias"].lr_mult) == (1, 2)

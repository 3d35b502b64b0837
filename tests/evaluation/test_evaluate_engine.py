"""The class-wise evaluation engine on real MNIST: counts, their consistency, determinism and
all-reduction over processes (gloo, 2 CPU processes)."""


import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cwr_fast.attacks import FGSM, PGD, build_attacks
from cwr_fast.classwise import ClasswiseCounts, build_report, evaluate_classwise

EPS = 0.1


def batches_of(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


@pytest.fixture(scope="module")
def data(mnist_eval):
    x, y = mnist_eval
    return x[:200], y[:200]


@pytest.fixture(scope="module")
def counts(mnist_model, data):
    attacks = build_attacks("fgsm,pgd-5,cw-5", mnist_model, eps=EPS, track="any")
    return evaluate_classwise(mnist_model, batches_of(*data, 50), 10, attacks)


def test_counts_add_up(counts, data):
    _, y = data
    n = torch.bincount(y, minlength=10)
    assert torch.equal(counts.n, n) and counts.total == len(y)
    assert torch.equal(counts.adv_confusion.sum(dim=2), n.expand(3, 10))   # rows sum to the class counts
    assert torch.equal(counts.worst_confusion.sum(dim=1), n)
    for k, name in enumerate(counts.attack_names):
        robust = counts.robust(name)
        assert (robust <= counts.clean_correct).all()
        assert (counts.worst_robust <= robust).all()
        assert (counts.gain[k, k] == 0).all()
    # gain[i, j] - gain[j, i] = robust_i - robust_j, class by class
    for i, a in enumerate(counts.attack_names):
        for j, b in enumerate(counts.attack_names):
            assert torch.equal(counts.gain[i, j] - counts.gain[j, i], counts.robust(a) - counts.robust(b))
    assert counts.robust("pgd-5").sum() < counts.clean_correct.sum() - 20   # the attack bites
    assert (counts.seconds > 0).all()


def test_counts_match_a_direct_computation(mnist_model, data):
    x, y = data
    attacks = {"fgsm": FGSM(mnist_model, eps=EPS), "pgd": PGD(mnist_model, eps=EPS, steps=4, random_start=False)}
    counts = evaluate_classwise(mnist_model, batches_of(x, y, 64), 10, attacks)
    with torch.no_grad():
        clean = mnist_model(x).argmax(1)
    correct = clean == y
    assert torch.equal(counts.clean_correct, torch.bincount(y[correct], minlength=10))
    worst = correct.clone()
    for name, atk in attacks.items():
        adv = clean.clone()
        adv[correct] = atk.run(x[correct], y[correct]).pred
        expected = torch.zeros(10, 10, dtype=torch.int64)
        expected.index_put_((y, adv), torch.ones_like(y), accumulate=True)
        assert torch.equal(counts.adv_confusion[counts.index(name)], expected)
        worst &= adv == y
    assert torch.equal(counts.worst_robust, torch.bincount(y[worst], minlength=10))


def test_deterministic_independent_of_batching_of_other_attacks_and_rng(mnist_model, data):
    x, y = data
    state = torch.random.get_rng_state()
    one = evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, {"pgd": PGD(mnist_model, eps=EPS, steps=3)})
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's RNG must be left alone"
    attacks = {"fgsm": FGSM(mnist_model, eps=EPS), "pgd": PGD(mnist_model, eps=EPS, steps=3)}
    two = evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, attacks)
    assert torch.equal(one.adv_confusion[0], two.adv_confusion[1])
    other_seed = evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, {"pgd": PGD(mnist_model, eps=EPS, steps=3)}, seed=1)
    assert torch.equal(other_seed.clean_confusion, one.clean_confusion)


def test_robust_accuracy_does_not_rise_with_eps(mnist_model, data):
    x, y = data
    eps_values = [0.0, 0.05, 0.1, 0.2]
    attacks = {f"eps={e}": PGD(mnist_model, eps=e, steps=5, track="any") for e in eps_values}
    counts = evaluate_classwise(mnist_model, batches_of(x, y, 100), 10, attacks)
    robust = [int(counts.robust(name).sum()) for name in attacks]
    assert robust[0] == int(counts.clean_correct.sum())  # eps = 0 changes nothing
    assert robust == sorted(robust, reverse=True) and robust[-1] < robust[0] // 2


def test_confidence_intervals_contain_the_estimate(counts):
    report = build_report(counts, [str(c) for c in range(10)])
    for section in report["attacks"] + [report["worst_case"]]:
        for record in section["per_class"]:
            assert 0 <= record["ci_low"] <= record["robust_acc"] <= record["ci_high"] <= 1
        o = section["overall"]
        assert o["ci_low"] <= o["robust_acc"] <= o["ci_high"]
    for record in report["clean"]["per_class"]:
        assert record["ci_low"] <= record["clean_acc"] <= record["ci_high"]


def test_training_loop_use_under_no_grad_restores_the_model(mnist_model, data):
    x, y = data
    mnist_model.train()
    try:
        with torch.no_grad():
            counts = evaluate_classwise(mnist_model, batches_of(x[:40], y[:40], 20), 10,
                                        [PGD(mnist_model, eps=EPS, steps=2, track="any")])
        assert mnist_model.training and all(p.requires_grad for p in mnist_model.parameters())
        assert counts.attack_names == ["pgd"]
    finally:
        mnist_model.eval()


def test_bad_input(mnist_model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        evaluate_classwise(mnist_model, batches_of(x, y, 50), 5, [FGSM(mnist_model, eps=EPS)])
    with pytest.raises(TypeError, match="not a cwr_fast Attack"):
        evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, {"x": object()})
    with pytest.raises(ValueError, match="both named 'fgsm'"):
        evaluate_classwise(mnist_model, [], 10, [FGSM(mnist_model), FGSM(mnist_model)])
    with pytest.raises(RuntimeError, match="process group"):
        evaluate_classwise(mnist_model, [], 10, [FGSM(mnist_model)], distributed=True)
    with pytest.raises(KeyError, match="no attack 'pgd'"):
        ClasswiseCounts(["fgsm"], 10).robust("pgd")


# ---- two processes (gloo) equal one process exactly ----------------------------------------------

def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        from cwr_fast.models import build_model
        model = build_model("small_cnn", 10, [0.1307], [0.3081])
        model.load_state_dict(torch.load(f"{folder}/model.pt", weights_only=True))
        x, y = torch.load(f"{folder}/data.pt", weights_only=True)
        attacks = build_attacks("fgsm,pgd-3,cw-3:target=random", model, eps=EPS, track="any")
        counts = evaluate_classwise(model, batches_of(x, y, 30), 10, attacks, distributed=True)
        if rank == 0:
            torch.save(counts.to_dict(), f"{folder}/counts.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_exactly(mnist_model, data, tmp_path):
    x, y = data[0][:150], data[1][:150]   # 5 batches: uneven over 2 ranks
    torch.save(mnist_model.state_dict(), tmp_path / "model.pt")
    torch.save((x, y), tmp_path / "data.pt")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "counts.pt", weights_only=True)
    attacks = build_attacks("fgsm,pgd-3,cw-3:target=random", mnist_model, eps=EPS, track="any")
    single = evaluate_classwise(mnist_model, batches_of(x, y, 30), 10, attacks).to_dict()
    assert sharded == single
    assert np.asarray(single["clean_confusion"]).sum() == 150


def test_channels_last_changes_layout_not_results(mnist_model, data):
    x, y = data
    weights = [p for p in mnist_model.parameters()]
    tensors = [p.data for p in weights]
    attacks = build_attacks("fgsm,pgd-3,cw-3", mnist_model, eps=EPS, track="any")
    fast = evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, attacks, channels_last=True)
    plain = evaluate_classwise(mnist_model, batches_of(x, y, 50), 10, attacks, channels_last=False)
    assert all(p.data.data_ptr() == t.data_ptr() for p, t in zip(weights, tensors)), "weights restored"
    assert torch.equal(fast.clean_confusion, plain.clean_confusion)
    # the same attacks up to rounding in the convolutions: per-class robust counts within 1 image
    assert (fast.adv_confusion.diagonal(dim1=1, dim2=2) - plain.adv_confusion.diagonal(dim1=1, dim2=2)).abs().max() <= 1


# ---- the one pipeline (classwise.pipeline): what evaluate, evaluate_model and the trainer run ----

def _without_times(value):
    """A report's plain dict without what differs between two runs: timings and its creation time."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items()
                if k != "created" and not k.endswith("seconds") and k != "images_per_s"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_the_pipeline_reports_what_the_engine_and_build_report_give(mnist_model, data):
    from cwr_fast.classwise.pipeline import EvalSettings, Evaluation

    names = [str(c) for c in range(10)]
    settings = EvalSettings(attacks="fgsm,pgd-3", eps=EPS, seed=3, progress=False)
    result = Evaluation(settings, num_classes=10).run(mnist_model, batches_of(*data, 50), names,
                                                      config={"source": "test"})
    attacks = build_attacks("fgsm,pgd-3", mnist_model, eps=EPS, track="any")
    counts = evaluate_classwise(mnist_model, batches_of(*data, 50), 10, attacks, seed=3, per_image=True)
    expected = build_report(counts, names, attacks=attacks, config={"source": "test"})
    assert _without_times(result.report) == _without_times(expected)
    assert list(result.report["config"]) == ["source", "seconds"]
    assert torch.equal(result.outcomes.adv_pred, counts.outcomes.adv_pred)


def test_the_pipelines_flags_belong_to_the_report_as_built(mnist_model, data):
    from cwr_fast.classwise.pipeline import EvalSettings, Evaluation

    names = [str(c) for c in range(10)]
    x, y = data
    wrong = batches_of(x, (y + 1) % 10, 50)  # labels off by one: clean accuracy near 0
    evaluation = Evaluation(EvalSettings(attacks="fgsm", eps=EPS, progress=False), num_classes=10)
    plain = evaluation.run(mnist_model, wrong, names)
    recorded = evaluation.run(mnist_model, wrong, names, recorded_clean=(1.0, "the test's checkpoint"))
    codes = [f["code"] for f in recorded.report["flags"]]
    assert "clean_accuracy_below_recorded" not in [f["code"] for f in plain.report["flags"]]
    assert codes[-1] == "clean_accuracy_below_recorded" and "the test's checkpoint" in \
        recorded.report["flags"][-1]["message"]


def test_the_validation_record_is_the_reports_per_class_summary(mnist_model, data):
    from cwr_fast.classwise.pipeline import EvalSettings, Evaluation, validate

    names = [f"digit {c}" for c in range(10)]
    evaluation = Evaluation(EvalSettings(attacks="pgd-3", eps=EPS, progress=False), num_classes=10)
    counts, record = validate(evaluation, mnist_model, batches_of(*data, 50), names)
    report = build_report(counts, names)
    clean, robust = report["clean"]["summary"], report["attacks"][0]["summary"]
    assert record["attack"] == "pgd-3" and record["eps"] == EPS
    assert record["clean_mean"] == clean["mean"] and record["robust_mean"] == robust["mean"]
    assert record["robust_worst"] == robust["worst"]["value"]
    assert record["worst_class"] == robust["worst"]["class"]
    assert record["worst_class_name"] == robust["worst"]["class_name"]
    assert record["robust"] == counts.robust("pgd-3").tolist() == \
        [r["robust"] for r in report["attacks"][0]["per_class"]]

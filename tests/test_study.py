"""The study's model options (fixed blend, AAM on stage 4, CAC on a projection / on L2-normalised S)
and the paired, resumable study script of the first study (study/first_study.py)."""

import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from runs import TINY

from csfr import models
from csfr.losses import ClassAwareConsistencyLoss

OPTS = {"width": 8, "head_channels": 16, "csfr_dim": 16}
K = 4


def tiny(name="csfr_r50_d8", **options):
    torch.manual_seed(0)
    return models.build(name, K, **{**OPTS, **options})


def batch(b=2, size=33):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=gen), torch.randint(0, K, (b, size, size), generator=gen)


def decode(model, images):
    """(z, s, x, c4) of a CSFR model."""
    c4 = model.backbone(images)[1]
    z, s = model.head(c4)
    return z, s, model.head.head(c4), c4


@pytest.mark.parametrize("options", [{"gate": "fixed"}, {"aam_fuses": "head"}, {"cac_projection": 8},
                                     {"cac_normalize": "pixel"}, {"cac_projection": 8, "cac_normalize": "none"},
                                     {"cac_centroids": "batch"}])
def test_study_options_build_and_train_one_step(options):
    model = tiny(**options).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = batch()
    losses = model(images, labels)["losses"]
    assert set(losses) == {"ce", "aux_ce", "cac_intra", "cac_inter"}
    assert all(torch.isfinite(v) for v in losses.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("head.csflm") for n in changed)
    if options.get("cac_projection"):  # the projection is trained by the CAC loss (its bias gets no
        assert "head.cac.embed.weight" in changed  # gradient but rounding: the loss ignores translations)
    if options.get("aam_fuses", "backbone") == "backbone":
        assert any(n.startswith("head.reduce") for n in changed)


def test_fixed_gate_is_an_even_blend_without_parameters():
    model = tiny(gate="fixed", aam_fuses="head").eval()
    assert model.head.aam.gate is None
    assert not any("aam.gate" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        z, s, x, _ = decode(model, batch()[0])
    torch.testing.assert_close(z, (x + s) / 2)  # csfr_dim == head_channels: S' = S


def test_aam_fuses_s_with_stage4_features_instead_of_x():
    model = tiny(aam_fuses="backbone").eval()
    with torch.no_grad():
        z, s, x, c4 = decode(model, batch()[0])
        expected = model.head.aam(model.head.reduce(c4), s)
        torch.testing.assert_close(z, expected)
        assert not torch.allclose(z, model.head.aam(x, s))
    assert tiny(aam_fuses="head").head.reduce is None  # fusing with X adds nothing


def test_cac_on_projection_and_on_normalised_features():
    images, labels = batch()
    loss = ClassAwareConsistencyLoss(K, delta_v=0.5, delta_d=1.5, backend="torch")
    margins = {"delta_v": 0.5, "delta_d": 1.5, "w_intra": 1.0, "w_inter": 1.0}
    projected = tiny(cac_projection=8, cac_normalize="none", **margins).train()
    with torch.no_grad():
        s = decode(projected, images)[1]
        got = projected.head.cac(s, labels)
        want = loss(projected.head.cac.embed(s), labels)
    assert projected.head.cac.embed.out_channels == 8
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    normalised = tiny(cac_normalize="pixel", **margins).train()
    with torch.no_grad():
        s = decode(normalised, images)[1]
        got = normalised.head.cac(s, labels)
        want = {k: v * s.shape[1] ** 0.5 for k, v in loss(F.normalize(s, dim=1), labels).items()}
        scaled = normalised.head.cac(3 * s, labels)  # unit norm: the loss ignores the feature scale
    for key in want:
        torch.testing.assert_close(got[key], want[key])
        torch.testing.assert_close(scaled[key], got[key])


@pytest.mark.parametrize("options, error, message", [
    ({"aam_fuses": "stage3"}, ValueError, "unknown aam_fuses 'stage3'; valid: head, backbone"),
    ({"cac_projection": -1}, ValueError, "option cac_projection must be >= 0"),
    ({"cac_projection": 1.5}, TypeError, "option cac_projection must be an integer"),
    ({"cac_normalize": "yes"}, ValueError, "unknown cac_normalize 'yes'; valid: none, pixel, image"),
    ({"gate": "learned"}, ValueError, "unknown gate 'learned'; valid: .*fixed"),
])
def test_bad_study_options_are_named(options, error, message):
    with pytest.raises(error, match=message):
        models.build("csfr_r50_d8", K, **{**OPTS, **options})


# -- the study script ----------------------------------------------------------------------------

def test_paired_difference_and_t_interval():
    study = importlib.import_module("study.first_study")
    n, mean, half = study.paired({0: 11.0, 1: 12.0, 2: 13.0, 3: 9.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert (n, mean) == (3, 2.0)  # seed 3 has no baseline: not paired
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert study.paired({0: 1.0}, {0: 0.5})[:2] == (1, 0.5) and math.isnan(study.paired({0: 1.0}, {0: 0.5})[2])


def study_args(tmp_path, *extra):
    sets = [arg for item in TINY for arg in ("--set", item)]
    return [*sets, "--iters", "2", "--curve-points", "2", "--work-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "T.md"), *extra]


def test_csfr_starts_from_the_baselines_initial_weights(tmp_path):
    study = importlib.import_module("study.first_study")
    args = study.parse_args(["main", *study_args(tmp_path)])
    config = study.run_config(args, "pairs", study.CSFR, 3)
    torch.manual_seed(99)  # whatever the RNG state before
    model = models.build(config["model"]["name"], 4, **config["model"]["options"])
    copied = study.share_initialisation(model, config, 4, seed=3)
    drawn = torch.rand(4)  # dropout streams start alike in every arm: the RNG is reseeded after the copy
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, torch.rand(4), rtol=0, atol=0)
    base_config = study.run_config(args, "pairs", study.BASELINE, 3)
    torch.manual_seed(3)
    base = models.build(base_config["model"]["name"], 4, **base_config["model"]["options"]).state_dict()
    own = model.state_dict()
    assert copied == len(base)  # every baseline tensor has its twin
    for key, value in base.items():
        twin = "head.head." + key[5:] if key.startswith("head.") else key
        torch.testing.assert_close(own[twin], value, rtol=0, atol=0)


def test_study_runs_pairs_resumes_and_reports(tmp_path, monkeypatch):
    study = importlib.import_module("study.first_study")
    argv = ["ablation", "--scenes", "modes", "--seeds", "0", "1", *study_args(tmp_path)]
    study.main(argv)
    text = (tmp_path / "T.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| arm", "| iteration", "| mIoU"))}
    assert list(rows) == [a.label for a in study.TABLES["ablation"]]
    assert all(r[0].strip() == "2" for r in rows.values())  # both seeds of every arm
    assert [rows["baseline"][i].strip() for i in (2, 5, 6)] == ["-", "-", "-"]  # no deltas, no S
    assert "[" in rows["full CSFR"][2] and float(rows["full CSFR"][6].split("±")[0]) > 0
    seps = [float(rows[arm][4].split("±")[0]) for arm in ("full CSFR", "baseline")]  # means over the same seeds
    # the paired mean difference is the difference of the means; each mean is printed to 0.005
    assert float(rows["full CSFR"][5].split()[0]) == pytest.approx(seps[0] - seps[1], abs=0.0105)
    deltas = [float(d) for d in rows["full CSFR"][3].split()]  # by seed: their mean is the delta
    assert len(deltas) == 2 and float(rows["full CSFR"][2].split()[0]) == pytest.approx(sum(deltas) / 2, abs=0.06)
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 8 and all("modes_it2_" in str(p) for p in results)
    record = json.loads(results[0].read_text())
    assert [it for it, _ in record["curve"]] == [1, 2] and record["wall_s"] > 0
    # more seeds for some arms only: the others keep their n
    study.main(["ablation", "--scenes", "modes", "--seeds", "0", "1", "2", "--arms", "0", "3", *study_args(tmp_path)])
    assert len(sorted((tmp_path / "runs").rglob("result.json"))) == 10
    counts = [line.split("|")[2].strip() for line in (tmp_path / "T.md").read_text().splitlines()
              if line.startswith(("| baseline", "| +", "| full"))]
    assert counts == ["3", "2", "2", "3"]
    with pytest.raises(SystemExit, match="arms 0-3"):
        study.main([*argv, "--arms", "4"])
    # a rerun trains nothing; the weight arm 0.1 is the reference CSFR's run
    monkeypatch.setattr(study, "train_one", lambda *a: pytest.fail("a finished run was retrained"))
    study.main(argv)
    study.main(["cac_weight", "--scenes", "modes", "--seeds", "0", "--report-only", *study_args(tmp_path)])
    weights = [line for line in (tmp_path / "T.md").read_text().splitlines() if line.startswith("| CAC weight")]
    assert [line.split("|")[2].strip() for line in weights] == ["0", "0", "1", "0", "0"]
    pytest.importorskip("matplotlib")
    study.main([*argv, "--pictures", "--pictures-dir", str(tmp_path / "images")])
    assert (tmp_path / "images" / "study_features_modes.png").read_bytes()[:4] == b"\x89PNG"
    study.main([*argv, "--pictures", "--pictures-dir", str(tmp_path / "images"), "--pictures-tag", "t"])
    assert (tmp_path / "images" / "study_features_modes_t.png").exists()


def test_pca_picture_of_two_clusters(tmp_path):
    pytest.importorskip("matplotlib")
    features = importlib.import_module("study.features")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    rows = torch.randn(200, 6, generator=gen) * 0.1
    rows[:, 3] += 5 * labels  # the classes differ along one axis only
    xy = features.pca_2d(rows)
    assert (xy[labels == 0, 0].mean() - xy[labels == 1, 0].mean()).abs() > 4  # the first component finds it
    path = tmp_path / "pca.png"
    features.plot_panels([("a", rows, labels), ("b", rows, labels)], ["zero", "one"], [(255, 0, 0), (0, 0, 255)],
                         path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))


def test_set_overrides_the_pinned_cac_weight_and_shares_the_runs_it_equals(tmp_path):
    """`--set model.options.w_intra=...` runs the table at that weight (it once lost to the pinned 0.1
    silently); an arm's own weights still win over it. A run is named by what it trains: the baseline
    (which ignores the CAC weights), the weight-0 arm and the full CSFR at 0.01 are the runs the other
    tables hold, found again and trained once; another kind of override names a group of its own."""
    study = importlib.import_module("study.first_study")
    weights = ["--set", "model.options.w_intra=0.01", "--set", "model.options.w_inter=0.01"]
    args = study.parse_args(["ablation", *study_args(tmp_path, *weights)])
    plain = study.parse_args(["ablation", *study_args(tmp_path)])
    other = study.parse_args(["ablation", *study_args(tmp_path, "--set", "train.lr=0.03")])
    arms = dict(zip(("baseline", "fixed", "no_cac", "full"), study.TABLES["ablation"]))
    config = study.run_config(args, "pairs", arms["full"], 0)
    assert (config["model"]["options"]["w_intra"], config["model"]["options"]["w_inter"]) == (0.01, 0.01)
    assert study.run_config(args, "pairs", arms["no_cac"], 0)["model"]["options"]["w_intra"] == 0.0
    assert study.run_config(plain, "pairs", arms["full"], 0)["model"]["options"]["w_intra"] == 0.1

    def folder(a, arm):
        return study.run_dir(a, study.run_config(a, "pairs", arm, 0), "pairs", 0)
    sweep = study.parse_args(["cac_weight", *study_args(tmp_path)])
    assert folder(args, arms["full"]) == folder(sweep, study.TABLES["cac_weight"][1])  # weight 0.01
    assert "+w_inter=0.01+w_intra=0.01" in folder(args, arms["full"]).parent.name
    for same in ("baseline", "no_cac"):
        assert folder(args, arms[same]) == folder(plain, arms[same])
    assert folder(args, arms["fixed"]) != folder(plain, arms["fixed"])
    assert folder(other, arms["baseline"]).parent.parent != folder(plain, arms["baseline"]).parent.parent
    # its table is a section of its own, not the one at the pinned weight
    titles = {study.section_title(a, "ablation", "pairs") for a in (args, plain, other)}
    assert len(titles) == 3 and "w_intra=0.01" in study.section_title(args, "ablation", "pairs")
    # a stored baseline is found again under another weight, and a changed used option is refused
    base = study.run_config(plain, "pairs", arms["baseline"], 0)
    stored = folder(plain, arms["baseline"])
    stored.mkdir(parents=True)
    study.write_json(stored / "result.json", {"config": base})
    assert study.load_result(stored, study.run_config(args, "pairs", arms["baseline"], 0)) is not None
    with pytest.raises(SystemExit, match="another config"):
        study.load_result(stored, study.run_config(other, "pairs", arms["baseline"], 0))

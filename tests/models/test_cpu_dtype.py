"""`--dtype auto` on a CPU: bf16 where the CPU multiplies it natively and the model is wide
enough to gain; the dtype an index was built in is the one its queries embed in."""

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dior_search.models
from dior_search.cli import main
from dior_search.data.synthetic import write_dataset
from dior_search.models import loading
from dior_search.models.loading import (
    CPU_BF16_VARIABLE,
    cpu_multiplies_bf16,
    cpuinfo_has_bf16,
    resolve_dtype,
)
from dior_search.store.manifest import Manifest

X86 = "processor\t: {n}\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"
ARM = "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve {extra}\nCPU part\t: 0xd40\n\n"


def cpuinfo(template: str, *extras: str) -> str:
    return "".join(template.format(n=n, extra=extra) for n, extra in enumerate(extras))


@pytest.mark.parametrize(
    ("text", "machine", "native"),
    [
        (cpuinfo(X86, "amx_bf16 amx_tile", "amx_bf16 amx_tile"), "x86_64", True),
        (cpuinfo(X86, "avx512_bf16", "avx512_bf16"), "x86_64", True),
        (cpuinfo(X86, "avx512_vnni", "avx512_vnni"), "x86_64", False),  # int8 only
        (cpuinfo(X86, "amx_bf16", ""), "x86_64", False),  # not on every processor
        (cpuinfo(ARM, "i8mm bf16", "i8mm bf16"), "aarch64", True),
        (cpuinfo(ARM, "i8mm", "i8mm"), "aarch64", False),
        (cpuinfo(X86, "avx512_bf16"), "aarch64", False),  # an ARM reads Features, not flags
        ("", "x86_64", False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_bf16_instructions_are_read_from_cpuinfo(text, machine, native):
    assert cpuinfo_has_bf16(text, machine) is native


def test_the_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setattr(loading, "read_cpuinfo", lambda: cpuinfo(X86, "avx512f"))
    monkeypatch.setattr(loading.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(CPU_BF16_VARIABLE, raising=False)
    assert not cpu_multiplies_bf16()
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    assert cpu_multiplies_bf16()
    monkeypatch.setattr(loading, "read_cpuinfo", lambda: cpuinfo(X86, "amx_bf16"))
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    assert not cpu_multiplies_bf16()
    monkeypatch.delenv(CPU_BF16_VARIABLE)
    assert cpu_multiplies_bf16()


def config_of_width(width: int) -> SimpleNamespace:
    text = SimpleNamespace(hidden_size=width)
    return SimpleNamespace(
        get_text_config=lambda: text, vision_config=SimpleNamespace(hidden_size=64)
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_a_native_cpu_for_wide_models_only(monkeypatch, native):
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1" if native else "0")
    cpu = torch.device("cpu")
    wide, narrow = config_of_width(2048), config_of_width(128)
    assert resolve_dtype("auto", cpu, wide) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", cpu, narrow) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), narrow) == torch.bfloat16
    assert resolve_dtype("float32", cpu, wide) == torch.float32
    assert resolve_dtype("bfloat16", cpu, narrow) == torch.bfloat16


def run_json(args: list[str]) -> list[dict]:
    out = StringIO()
    with redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.fixture
def loaded_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every embedder `index` and `query` load, in order."""
    seen: list[torch.dtype] = []
    load = dior_search.models.load_embedder

    def recording(settings):
        embedder = load(settings)
        seen.append(embedder.dtype)
        return embedder

    monkeypatch.setattr(dior_search.models, "load_embedder", recording)
    return seen


def test_an_index_built_in_bf16_is_queried_in_bf16(tmp_path, monkeypatch, loaded_dtypes):
    """Built where auto chose bf16, queried on a CPU without it: the query still embeds in
    bf16, so an indexed image finds itself with its own vector; --dtype overrides it."""
    write_dataset(tmp_path / "images", {"test": 6}, labels=False)
    indexes = tmp_path / "indexes"
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    monkeypatch.setattr(loading, "CPU_BF16_MIN_WIDTH", 0)  # the tiny model counts as wide
    index = ["index", "--images", str(tmp_path / "images"), "-c", "color", "--model", "tiny"]
    assert main([*index, "--indexes", str(indexes), "--device", "cpu"]) == 0
    (directory,) = {path.parent for path in indexes.rglob("manifest.json")}
    assert Manifest.read(directory).embedder.dtype == "bfloat16"
    assert loaded_dtypes == [torch.bfloat16]  # index's own model
    loaded_dtypes.clear()

    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    image = tmp_path / "images" / "test" / "00003.png"
    query = ["query", str(image), "--index", str(directory), "--json", "-k", "6"]
    hits = run_json(query)
    assert loaded_dtypes == [torch.bfloat16]
    assert Path(hits[0]["path"]).name == "00003.png"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)

    fp32_hits = run_json([*query, "--dtype", "float32"])
    assert loaded_dtypes == [torch.bfloat16, torch.float32]
    scores = {Path(hit["path"]).name: hit["score"] for hit in fp32_hits}
    assert np.isfinite(list(scores.values())).all()


@pytest.mark.parametrize(("built", "added"), [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_an_index_is_appended_to_and_queried_in_the_dtype_it_was_built_in(
    tmp_path, monkeypatch, loaded_dtypes, built, added
):
    """Built where auto chose one dtype, appended to where auto would choose the other: the
    new images are embedded in the index's dtype (its manifest still says so), and a query
    then finds a new image with its own vector."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    write_dataset(tmp_path / "images", {"test": 6}, labels=False)
    later = tmp_path / "later"
    later.mkdir()
    for name in ("00004.png", "00005.png"):
        (tmp_path / "images" / "test" / name).rename(later / name)
    monkeypatch.setattr(loading, "CPU_BF16_MIN_WIDTH", 0)  # the tiny model counts as wide
    index = ["index", "--images", str(tmp_path / "images"), "-c", "color", "--model", "tiny"]
    index += ["--indexes", str(tmp_path / "indexes"), "--device", "cpu"]
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1" if built == "bfloat16" else "0")
    assert main(index) == 0
    for name in ("00004.png", "00005.png"):
        (later / name).rename(tmp_path / "images" / "test" / name)
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1" if added == "bfloat16" else "0")
    assert main(index) == 0
    (directory,) = {path.parent for path in (tmp_path / "indexes").rglob("manifest.json")}
    manifest = Manifest.read(directory)
    assert (manifest.embedder.dtype, manifest.rows) == (built, 6)
    assert loaded_dtypes == [dtypes[built], dtypes[built]]

    image = tmp_path / "images" / "test" / "00005.png"
    hits = run_json(["query", str(image), "--index", str(directory), "--json", "-k", "6"])
    assert loaded_dtypes[-1] == dtypes[built]
    assert Path(hits[0]["path"]).name == "00005.png"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_asked_dtype_or_another_embedders_index_is_not_followed():
    from dior_search.models.embedder import EmbedderDescription
    from dior_search.models.loading import follow_recorded_dtype
    from dior_search.models.settings import DiorSettings

    def built(dtype: str, **settings) -> EmbedderDescription:
        stored = DiorSettings(model="tiny", **settings)
        return EmbedderDescription(stored, "qwen2_5_vl", None, "f", dtype, 128)

    auto = DiorSettings(model="tiny")
    assert follow_recorded_dtype(auto, [built("float32")]).dtype == "float32"
    assert follow_recorded_dtype(auto, [built("float32", layer=-2)]).dtype == "auto"
    assert follow_recorded_dtype(auto, [built("float32"), built("bfloat16")]).dtype == "auto"
    assert follow_recorded_dtype(auto, []).dtype == "auto"
    asked = DiorSettings(model="tiny", dtype="bfloat16")
    assert follow_recorded_dtype(asked, [built("float32")]).dtype == "bfloat16"


# -- the CPU benchmarks' functions, on tiny shapes (the figures come from the scripts) --------

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cpu_probe
    import cpu_throughput
    import dtype_agreement

    return SimpleNamespace(probe=cpu_probe, throughput=cpu_throughput, agreement=dtype_agreement)


def test_probe_rates_every_dtype_at_the_models_shapes(benchmarks):
    from embed_throughput import model_config

    from dior_search.models.tiny_training import build_qwen_tokenizer, tiny_corpus

    config = model_config(build_qwen_tokenizer(tiny_corpus(), vocab_size=300), "3b")
    shapes = benchmarks.probe.model_shapes(config, patches=256, prefix=90, suffix=12)
    assert shapes["hidden"] == benchmarks.probe.Shape(90, 2048, 2048)
    assert shapes["mlp"] == benchmarks.probe.Shape(90, 2048, 11008)
    assert shapes["vision"] == benchmarks.probe.Shape(256, 1280, 3420)
    assert shapes["decode"].rows == 1
    assert benchmarks.probe.tokens_of_image(224) == (256, 64)
    small = {"hidden": benchmarks.probe.Shape(4, 16, 8)}
    assert small["hidden"].flops == 2 * 4 * 16 * 8
    rates = benchmarks.probe.probe(small, ["float32", "bfloat16", "int8"], seconds=0.01)
    expected = {"float32", "bfloat16"} | ({"int8"} if benchmarks.probe.int8_supported() else set())
    assert set(rates) == expected
    for by_shape in rates.values():
        assert by_shape["hidden"]["best"] >= by_shape["hidden"]["median"] > 0


def test_stage_clock_splits_embedding_into_its_stages(benchmarks, tiny_model_dirs, mixed_images):
    """Vision, prefix, suffix and decoding each timed, their work as flops.py counts it."""
    from dior_search.models.dior import DiorEmbedder
    from dior_search.models.settings import DiorSettings

    settings = DiorSettings(model=str(tiny_model_dirs["qwen2_5_vl"]), device="cpu", batch_size=4)
    embedder = DiorEmbedder(settings)
    embedder.answer_text = benchmarks.throughput.answers_of_length(3)
    images = mixed_images[:2]
    seconds, stages = benchmarks.throughput.embed_timed(embedder, images, 2, answers=False)
    assert set(stages) == {"vision", "prefix", "suffix"} and seconds >= sum(stages.values())
    _, answered = benchmarks.throughput.embed_timed(embedder, images, 2, answers=True)
    assert set(answered) == {"vision", "prefix", "suffix", "decode"}
    work = benchmarks.throughput.stage_work(embedder, images, 2, answer_tokens=3)
    shorter = benchmarks.throughput.stage_work(embedder, images, 2, answer_tokens=1)
    assert all(work[stage] > 0 for stage in benchmarks.throughput.STAGES)
    assert {k: v for k, v in shorter.items() if k != "decode"} == {
        k: v for k, v in work.items() if k != "decode"
    }
    assert shorter["decode"] < work["decode"]


def test_summary_gives_each_stage_its_share_of_the_probe(benchmarks):
    def figures(images_per_s: float, limit: float) -> dict:
        run = {
            "images_per_s": images_per_s,
            "gflops_whole_pass": limit / 2,
            "stage_seconds": {"vision": 2.0, "prefix": 0.0},
            "stage_gflop": {"vision": limit, "prefix": 1.0},
        }
        return {
            "dtype": "x",
            "probe_gflops": {"x": {"hidden": {"median": limit}}},
            "runs": {"1": run},
        }

    by_dtype = {"float32": figures(1.0, 100.0), "bfloat16": figures(3.0, 300.0)}
    out = benchmarks.throughput.summary(by_dtype, [1])
    assert out["bf16_over_fp32_images_per_s"] == {"1": 3.0}
    run = by_dtype["bfloat16"]["runs"]["1"]
    assert run["stage_share_of_probe"] == {"vision": 0.5}  # a stage that took no time: none
    assert run["whole_pass_share_of_probe"] == 0.5


def test_bench_differences_per_condition(benchmarks, tmp_path):
    def bench(recall: float) -> Path:
        path = tmp_path / f"{recall}.json"
        scores = {"recall@1": recall, "map@r": 0.5}
        path.write_text(json.dumps({"synthetic": {"color": {"dior": scores}}}))
        return path

    rows = benchmarks.agreement.bench_differences(bench(0.75), bench(0.5))
    assert rows["synthetic/color/dior"]["recall@1 difference"] == -0.25
    assert rows["synthetic/color/dior"]["map@r difference"] == 0.0


def test_error_sources_benchmark_finds_the_mixed_form_close_to_fp32(benchmarks, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bf16_error_sources

    figures = bf16_error_sources.main(["--images", "6"])
    forms = figures["cosine_with_fp32"]
    assert set(forms) == set(bf16_error_sources.forms())
    assert forms["products, q/k in fp32"]["min"] >= 0.999
    assert forms["weights rounded"]["min"] >= 0.999
    assert set(figures["bf16_throughout_by_layer"]) == {"1", "2", "3", "4"}


def test_options_benchmark_times_each_option_against_the_first(benchmarks, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cpu_options

    model = Path(dior_search.models.__file__).parent / "tiny_model"
    argv = ["--model-dir", str(model), "--images", "2", "--repeats", "1", "--photo-side", "400"]
    figures = cpu_options.main([*argv, "--batch-sizes", "1", "2"])
    assert figures["mixed"] is True
    assert list(figures["attention_c1"]) == ["sdpa", "eager"]
    assert list(figures["batch_c1"]) == ["1", "2"]
    for group in ("attention_c1", "attention_c10", "vision", "batch_c1"):
        first = next(iter(figures[group].values()))
        assert first["speed_vs_first"] == 1.0
        assert all(option["images_per_s"] > 0 for option in figures[group].values())
    assert figures["preprocessing"]["cpu_seconds_per_image"]["decode_jpeg"] > 0

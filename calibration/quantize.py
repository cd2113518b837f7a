"""``quantize_bundle``: add a gated fp16 / int8 variant to a bundle, atomically.

1. Calibration and judging users are drawn, disjoint (``data.split_users``).
2. The fp32 graphs answer the judging users once (the reference lists), and for int8-static
   record the calibration inputs (``data.record_feeds``).
3. The bundle is staged in a hidden sibling (hard links, ``genrec.exporter.convert.
   stage_bundle``); every try writes the variant's graphs under ``variants/<precision>/``
   there, with the scoring head, TopK and log_z kept fp32 (``recipes.ALWAYS_FP32``) plus the
   groups being tried, and is judged through the onnxruntime backend (``gate.compare``).
4. The first passing set of groups found by ``search.search_groups`` is kept; nothing passing,
   or passing only with every group in fp32, is refused (GateError naming the loss).
5. The manifest gains the variant (recipe, calibration digest, user counts, excluded groups
   and nodes, measured deltas, every try), is written and the staged bundle is verified in
   full, and only then replaces the bundle by rename. Any failure or interrupt before that
   removes the staging directory: the bundle stays byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genrec.errors import BundleError, ConfigError, GenrecError


class QuantizeError(GenrecError):
    """A recipe produced a graph onnxruntime cannot load or run."""

from .gate import GateError, compare, judge_lists
from .groups import node_groups
from .recipes import ALWAYS_FP32, METHODS, PRECISIONS, convert_graph, preprocess, recipe
from .search import search_groups

__all__ = ["QuantizeError", "quantize_bundle", "check_options"]

WORK = ".quantize-work"  # scratch inside the staging directory (removed before the manifest)


def check_options(precision: str, method: str, max_ndcg_loss: float, calib_users: int, judge_users: int) -> None:
    """ConfigError for settings no run can use (checked before any work)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if not 0 <= max_ndcg_loss < 1:
        raise ConfigError(f"--max-ndcg-loss {max_ndcg_loss}: expected a fraction in [0, 1), e.g. 0.01 for 1%")
    if calib_users < 1 or judge_users < 2:
        raise ConfigError("--calib-users must be >= 1 and --judge-users >= 2")
    if precision == "fp16":
        try:
            import onnxconverter_common  # noqa: F401
        except ImportError:
            from .recipes import MissingQuantTools

            raise MissingQuantTools("fp16 needs onnxconverter-common: pip install 'genrec-deploy[quant]'") from None


def quantize_bundle(path: str | os.PathLike[str], precision: str, calib_data: str | os.PathLike[str], *,
                    calib_users: int = 256, judge_users: int = 500, holdout: str | os.PathLike[str] | None = None,
                    method: str = "minmax", per_channel: bool = False, max_ndcg_loss: float = 0.01,
                    seed: int = 0, threads: int | None = None, steps: int = 3, force: bool = False,
                    quantize_head: bool = False, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Add variant ``precision`` to the bundle at ``path``; returns what the manifest records.

    ``quantize_head`` lets the scoring head (catalogue MatMul, log_z) be quantised too, as
    one more searchable group: for measuring what fp32 scoring costs (``recipes`` says why it
    is fp32 by default)."""
    from genrec.atomic import atomic_directory
    from genrec.bundle import Bundle, load_bundle, write_manifest
    from genrec.exporter.convert import stage_bundle
    from genrec.runtimes.onnxrt import OrtBackend

    from .data import feeds_digest, record_feeds, split_users

    say = say or (lambda msg: None)
    check_options(precision, method, max_ndcg_loss, calib_users, judge_users)
    b = load_bundle(path)
    m = b.manifest
    if precision == m.precision:
        raise ConfigError(f"bundle {b.path} is {m.precision} already; a variant must differ from the base")
    if precision in m.variants and not force:
        raise BundleError(f"bundle {b.path} has a {precision} variant already; pass --force to replace it")
    users = split_users(calib_data, holdout, b.id_map, calib_users, judge_users, seed)
    say(f"{len(users.calib)} calibration users, {len(users.judge)} judging users (disjoint)")
    list_k = min(m.dims.topk, 50)
    with OrtBackend(b, threads=threads) as ref_backend:
        ref = judge_lists(ref_backend, users.judge, users.targets, list_k)
    feeds = None
    if precision == "int8-static":
        say("recording calibration inputs from the fp32 graphs")
        feeds = record_feeds(b, users, steps=steps, threads=threads, seed=seed)
    with atomic_directory(b.path, force=True) as tmp:
        stage_bundle(b.path, tmp, skip_prefix=f"variants/{precision}")
        work, vdir = tmp / WORK, tmp / "variants" / precision
        work.mkdir()
        vdir.mkdir(parents=True, exist_ok=True)
        sources, groups = {}, {}
        import onnx

        for g, spec in m.graphs.items():
            src = tmp / spec.file
            if precision.startswith("int8"):
                pre = work / f"{g}.pre.onnx"
                preprocess(src, pre)
                src = pre
            sources[g] = src
            groups[g] = node_groups(onnx.load(str(src), load_external_data=False))
        always = () if quantize_head else ALWAYS_FP32
        names = sorted({n for ng in groups.values() for n in ng.groups} - set(always))
        variant = _variant_entry(m, precision)
        staged = Bundle(tmp, m.replace(variants={**m.variants, precision: variant}))
        results: dict[tuple[str, ...], dict[str, Any]] = {}

        def build(excluded: tuple[str, ...]) -> None:
            for g, src in sources.items():
                reader = None
                if feeds is not None:
                    from .data import FeedReader

                    ins = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
                    reader = FeedReader(feeds.graphs[g], ins)
                convert_graph(precision, src, vdir / f"{g}.onnx", groups[g].nodes(set(excluded) | set(always)),
                              reader=reader, cache=work / f"{g}.ranges.json", method=method, per_channel=per_channel)
                _same_io(m.graphs[g], vdir / f"{g}.onnx")

        def evaluate(excluded: tuple[str, ...]) -> float:
            say(f"trying {precision} with {', '.join(excluded) or 'no extra group'} in fp32")
            try:
                build(excluded)
                with OrtBackend(staged, precision=precision, threads=threads) as cand_backend:
                    cand = judge_lists(cand_backend, users.judge, users.targets, list_k)
            except GenrecError:
                raise
            except Exception as e:  # noqa: BLE001 - onnxruntime/converter failures, named in one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise QuantizeError(f"{precision} with {', '.join(excluded) or 'no extra group'} in fp32 could not "
                                    f"be made or run in onnxruntime ({type(e).__name__}: {first})") from None
            results[excluded] = compare(ref, cand, seed)
            loss = results[excluded]["ndcg_relative_loss"]["value"]
            say(f"  relative NDCG@10 loss {loss:+.2%}")
            return loss

        found = search_groups(names, evaluate, max_ndcg_loss)
        if found.excluded is None:
            best = found.best
            raise GateError(
                f"refusing to write {precision}: relative NDCG@10 loss {best.loss:.2%} exceeds --max-ndcg-loss "
                f"{max_ndcg_loss:.2%} (best try kept {', '.join(best.excluded) or 'no extra group'} in fp32; "
                f"{len(found.trail)} tries); passing only with every node group in fp32 would quantise nothing")
        if found.trail[-1].excluded != found.excluded:
            build(found.excluded)  # the last try was a failed prune: rebuild the kept set
        measured = results[found.excluded]
        shutil.rmtree(work)
        info = {
            "recipe": recipe(precision, method, per_channel),
            **users.info(),
            "excluded": {"groups": [*always, *found.excluded], "default_groups": list(always),
                         "searched_groups": list(found.excluded),
                         "nodes": {g: sorted(ng.nodes(set(found.excluded) | set(always)))
                                   for g, ng in groups.items()},
                         "per_layer_groups": all(ng.per_layer for ng in groups.values())},
            "gate": {"max_ndcg_loss": max_ndcg_loss, "list_k": list_k, "seed": seed,
                     "search": [{"excluded": list(t.excluded), "ndcg_relative_loss": t.loss, "passed": t.passed}
                                for t in found.trail]},
            "deltas": measured,
            "size_bytes": {g: (vdir / f"{g}.onnx").stat().st_size for g in m.graphs},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if feeds is not None:
            info["calibration"].update(feeds_sha256=feeds_digest(feeds), samples=feeds.counts(), method=method)
        write_manifest(tmp, m.replace(variants={**m.variants, precision: replace(variant, info=info)}))
        load_bundle(tmp)  # the whole staged bundle, variant included, before it replaces the old one
    say(f"wrote {precision} variant into {b.path}")
    return info


def _variant_entry(m, precision: str):
    from genrec.manifest import Variant

    return Variant(dir=f"variants/{precision}", graphs={g: replace(s, file=f"{g}.onnx") for g, s in m.graphs.items()})


def _same_io(spec, path: Path) -> None:
    """The variant keeps the fp32 graph's IO contract exactly (names, dtypes, shapes)."""
    from genrec.bundle import io_spec_from_onnx

    got = io_spec_from_onnx(path)
    if got != spec.io():
        raise BundleError(f"{path.name}: the converted graph changed the IO contract ({got} vs {spec.io()}); "
                          "this is a bug in the recipe")

"""The documented Python API (README, "The Python API"), used exactly as a script would.

These names are a promise: later work (backend options, variants, Ascend) extends them and
must keep this file passing unchanged.
"""

from __future__ import annotations

import numpy as np
import torch



def test_models_and_checkpoints(tmp_path):
    from genrec.checkpoint import load_checkpoint, save_checkpoint
    from genrec.models import build_model, make_config

    cfg = make_config("llama", 50, "small").replace(max_len=12, num_layers=1)
    assert (cfg.arch, cfg.num_items, cfg.max_len, cfg.num_layers) == ("llama", 50, 12, 1)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, list(range(1000, 1050)), {"dataset": "toy"})
    ckpt = load_checkpoint(path)
    assert ckpt.config == cfg and ckpt.id_map[0] == 1000 and ckpt.metadata["dataset"] == "toy"
    for a, b in zip(model.state_dict().values(), ckpt.model.state_dict().values()):
        assert torch.equal(a, b)


def test_backend_surface_and_decoding_entry_points(bundles):
    from genrec.bundle import load_bundle
    from genrec.runtimes import PrefillBatch, Request, generate, get_backend, rank, recommend

    bundle = load_bundle(bundles["gpt"])
    assert bundle.graph_path("prefill").is_file() and len(bundle.digest) == 64  # paths from the typed manifest
    raw = bundle.id_map
    with get_backend("onnxruntime", bundle) as backend:
        d = backend.dims
        assert (d.max_history, d.topk, d.max_exclude) == (bundle.dims.max_history, bundle.dims.topk,
                                                          bundle.dims.max_exclude)
        b = min(d.batch_gears)
        ids = np.zeros((b, d.max_history), np.int32)
        ids[:, :3] = [4, 8, 15]
        out, state = backend.prefill(PrefillBatch(item_ids=ids, lengths=np.full(b, 3, np.int32),
                                                  exclude_ids=np.zeros((b, d.max_exclude), np.int32)))
        assert out.topk_ids.shape == (b, d.topk) and out.user_emb.shape == (b, d.d_model)
        step = backend.step(state, out.topk_ids[:, 0], np.full(b, 3), None,
                            np.zeros((b, d.max_exclude), np.int32))
        assert step.topk_ids.shape == (b, d.step_topk)
        backend.reorder(state, np.zeros(b, np.int64))
        scores = backend.rank(state, np.tile(np.arange(1, d.rank_candidates + 1), (b, 1)), np.full(b, 4), None)
        assert scores.shape == (b, d.rank_candidates) and np.isfinite(scores).all()

        req = Request("u1", items=raw[:5], candidates=raw[10:14])
        recs = recommend(backend, [req], k=5)
        assert recs[0].user_id == "u1" and len(recs[0].items) == 5 and not set(recs[0].items) & set(raw[:5])
        slates = generate(backend, [req], steps=3)
        assert len(slates[0].items) == 3 and len(set(slates[0].items)) == 3
        ranked = rank(backend, [req])
        assert sorted(ranked[0].items) == sorted(raw[10:14])

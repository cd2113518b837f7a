"""``genrec quantize``: a thin click layer over ``genrec.calibration.quantize_bundle``."""

from __future__ import annotations

import click


@click.command("quantize", short_help="Add a gated fp16 / int8 variant to a bundle.")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", required=True, type=click.Choice(["fp16", "int8-dynamic", "int8-static"]),
              help="The variant to add (also its name: onnxruntime:<precision>).")
@click.option("--calib-data", required=True, type=click.Path(exists=True),
              help="Interaction data whose real histories calibrate (and, without --holdout, judge).")
@click.option("--calib-users", type=click.IntRange(1), default=256, show_default=True,
              help="Calibration users (never among the judging users).")
@click.option("--judge-users", type=click.IntRange(2), default=500, show_default=True,
              help="Held-out users the accuracy gate compares fp32 and the variant on.")
@click.option("--holdout", type=click.Path(exists=True), default=None,
              help="Judge on this data instead (users that calibrate are left out).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="int8-static calibration method.")
@click.option("--per-channel", is_flag=True, help="int8: per-channel weight scales.")
@click.option("--max-ndcg-loss", type=float, default=0.01, show_default=True,
              help="Largest relative NDCG@10 loss against fp32 (0.01 = 1%).")
@click.option("--target", type=click.Choice(["onnxruntime", "ascend"]), default="onnxruntime", show_default=True,
              help="ascend: int8 through Huawei AMCT (fp16 on Ascend is `genrec convert --precision fp16`).")
@click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime threads.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing variant of this precision.")
@click.option("--quantize-head", is_flag=True,
              help="Also quantise the scoring head (catalogue MatMul, log_z); fp32 by default, see the docs.")
def quantize_command(bundle, precision, calib_data, calib_users, judge_users, holdout, method, per_channel,
                     max_ndcg_loss, target, threads, seed, force, quantize_head):
    """Quantise BUNDLE's graphs to PRECISION, calibrated on real histories from --calib-data,
    and add the variant only if its relative NDCG@10 loss against fp32 on disjoint held-out
    users is at most --max-ndcg-loss (keeping the fewest node groups in fp32 that get there).

    \b
    genrec quantize bundle/ --precision int8-static --calib-data data/beauty-slice
    genrec parity bundle/ --reference onnxruntime --candidate onnxruntime:int8-static --data holdout/
    """
    if target == "ascend":
        from .ascend import quantize_for_ascend

        quantize_for_ascend(bundle, precision, calib_data, calib_users=calib_users, seed=seed,
                            say=lambda m: click.echo(m, err=True))
        return
    from .quantize import quantize_bundle

    info = quantize_bundle(bundle, precision, calib_data, calib_users=calib_users, judge_users=judge_users,
                           holdout=holdout, method=method, per_channel=per_channel, max_ndcg_loss=max_ndcg_loss,
                           seed=seed, threads=threads, force=force, quantize_head=quantize_head,
                           say=lambda m: click.echo(m, err=True))
    d = info["deltas"]
    loss = d["ndcg_relative_loss"]
    lines = [f"{precision}: relative NDCG@10 loss {loss['value']:+.2%} (95% CI {loss['ci95'][0]:+.2%} .. "
             f"{loss['ci95'][1]:+.2%}) on {d['users']} judging users, {info['calibration']['users']} calibration users"]
    for name, v in d["metrics"].items():
        lines.append(f"  {name}: {v['fp32']:.4f} -> {v['variant']:.4f} (delta {v['delta']:+.4f}, 95% CI "
                     f"{v['delta_ci95'][0]:+.4f} .. {v['delta_ci95'][1]:+.4f})")
    lines.append(f"  overlap@10 {d['overlap@10']:.3f}; fp32 kept: {', '.join(info['excluded']['groups'])}")
    click.echo("\n".join(lines))

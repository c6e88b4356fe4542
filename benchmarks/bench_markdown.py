"""``results.md``'s generated part: which runs measured what, the table of figures against targets, the rates."""

from __future__ import annotations

from typing import Any

# Everything from this heading on in ``results.md`` is written by hand and kept by every run.
NOTES_HEADING = "## Notes on these figures"


def machine_text(m: dict[str, Any]) -> str:
    return (
        f"{m.get('device_name')} ({m.get('cores')} cores usable, torch {m.get('torch')}, "
        f"{m.get('torch_threads')} torch threads, {m.get('loader_workers')} loader workers, "
        f"device `{m.get('device')}`, OMP_WAIT_POLICY {m.get('omp_wait_policy')})"
    )


def kept_figures(figures: dict[str, Any]) -> dict[str, list[str]]:
    """The figures kept from earlier runs (those carrying their own ``machine``), by the date of the run that
    measured them."""
    by_date: dict[str, list[str]] = {}
    for name, data in figures.items():
        if isinstance(data, dict) and isinstance(data.get("machine"), dict):
            by_date.setdefault(str(data["machine"].get("date")), []).append(name)
    return by_date


def names_text(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def runs_lines(results: dict[str, Any]) -> list[str]:
    """When and where this run measured, how busy the machine was, and the runs whose figures were kept."""
    m = results["machine"]
    kept = kept_figures(results["figures"])
    if kept:
        measured = names_text(results.get("measured", [])) or "none"
        lines = [f"This run measured {measured} on {m['date']} on {machine_text(m)}."]
    else:
        lines = [f"Measured {m['date']} on {machine_text(m)}."]
    lines.append("")
    other = m.get("other_processes_cpu_share")
    if other is not None and other > 0.05:
        lines += [f"Other processes used {other:.0%} of the machine's CPU time during the run: figures are noisy.", ""]
    for date, names in sorted(kept.items()):
        old = results["figures"][names[0]]["machine"]
        share = old.get("other_processes_cpu_share")
        busy = f"; other processes used {share:.0%} of its CPU time" if share is not None and share > 0.05 else ""
        lines += [
            f"Kept from the run of {date} (not re-measured here) on {machine_text(old)}{busy}: {names_text(names)}.",
            "",
        ]
    return lines


def shown_value(figure: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if figure in ("evaluation_speed", "pipeline_efficiency", "pipeline_efficiency_cached"):
        return f"{value:.3f}"
    if figure == "photos_memory":
        return f"{value:+.1f} MiB"
    return f"{value:.0f} MiB" if figure == "memory" else f"{value:.3g}x"


def table_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| figure | measured | target | met? |",
        "|---|---|---|---|",
    ]
    for row in summary:
        shown = shown_value(row["figure"], row["measured"])
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        note = row["note"]
        if isinstance(note, dict):
            note = "; ".join(f"{k}: {v}" for k, v in note.items())
        lines.append(f"| {row['label']} | {shown}{' (' + str(note) + ')' if note else ''} | {row['target']} | {met} |")
    return lines


def rates_paragraphs(figures: dict[str, Any]) -> list[str]:
    """The absolute rates behind the ratios: training, CAM methods, backbones, thread splits."""
    paragraphs = []
    pipe = figures.get("pipeline_efficiency", {})
    if "images_per_s_memory" in pipe:
        paragraphs.append(
            f"Absolute training images/s ({pipe['device']}, batch {pipe['batch']}): in memory "
            f"{pipe['images_per_s_memory']:.1f}, from JPEG {pipe['images_per_s_jpeg']:.1f}, "
            f"from the cache {pipe['images_per_s_cached']:.1f}."
        )
    methods = figures.get("cam_methods", {})
    if "ms_per_image" in methods:
        per_method = ", ".join(f"{name} {ms:.1f}" for name, ms in methods["ms_per_image"].items())
        paragraphs.append(
            f"CAM methods, ms per image ({methods['device']}, AlexNet-GAP, batch {methods['batch']}, "
            f"{methods['image_size']}x{methods['image_size']}): {per_method}."
            + (
                f" The map checks of the methods table (Average Drop, energy in the box, randomisation) add "
                f"{methods['checks_ms_per_image_cam']:.1f} ms per image to `cam`; the randomisation test makes each "
                "method's maps twice more."
                if "checks_ms_per_image_cam" in methods
                else ""
            )
        )
    table = figures.get("backbones", {})
    if table.get("archs"):
        per_arch = ", ".join(
            f"{a['title']} {a['train_images_per_s']:.1f} ({a['parameters_millions']:.1f} M parameters, CAM "
            f"{'x'.join(map(str, a['cam_size']))})"
            for a in table["archs"].values()
        )
        paragraphs.append(
            f"Training images/s per backbone ({table['device']}, batch {table['batch']}, {table['image_size']}x"
            f"{table['image_size']}, in memory): {per_arch}."
        )
    split = figures.get("thread_split", {})
    if "images_per_s" in split:
        per_split = ", ".join(f"{name} {rate:.1f}" for name, rate in split["images_per_s"].items())
        paragraphs.append(f"Training images/s from JPEG by split of the cores: {per_split} (best: {split['best']}).")
    return paragraphs


def report_paragraph(page: dict[str, Any]) -> str:
    demo, large = page["demo"], page["large"]
    return (
        f"Report: demo set {demo['images']:,} images {demo['mb']:.2f} MB in {demo['seconds']:.2f} s; "
        f"{large['images']:,} images {large['mb']:.{1 if large['mb'] >= 10 else 2}f} MB in {large['seconds']:.1f} s "
        f"({1000 * large['seconds_per_image']:.1f} ms per image). `write_report` of an untrained AlexNet-GAP "
        f"({page['device']}, batch {page['batch']}, {page['loader_workers']} loader workers), "
        f"{'x'.join(map(str, page['source_image_wh']))} JPEGs read at {page['image_size']}x{page['image_size']}, "
        f"{page['thumb_size']}-pixel thumbnails; {large['classes_with_images']} classes x "
        f"{large['images'] // large['classes_with_images']} test images for the large set."
    )


def photos_paragraph(data: dict[str, Any]) -> str:
    rate, stage = data["photos_per_s"], data["stages_ms_per_photo"]
    return (
        f"Your own photos, photos/s ({data['device']}, {data['arch']}, {data['photos']} JPEGs of "
        f"{'x'.join(map(str, data['photo_wh']))} read at {data['image_size']}x{data['image_size']}, batch "
        f"{data['batch']}, `--method cam`): the command {rate['command']:.1f} ({rate['command_workers']:.1f} with "
        f"`--num_workers {data['loader_workers']}`), the forward pass alone on the photos in memory "
        f"{rate['floor']:.1f}, the peers' per-image loop {rate['peer_loop']:.1f} (the command "
        f"{data['command_vs_peer_loop']:.2f}x the loop). Each stage alone, ms per photo: decode {stage['decode']:.1f}, "
        f"forward {stage['forward']:.1f}, scoring pass (forward, maps, boxes) {stage['score']:.1f}, overlay "
        f"{stage['overlay']:.1f}, JPEG {stage['jpeg']:.1f}."
    )


def score_maps_paragraph(data: dict[str, Any]) -> str:
    rate, check = data["maps_per_s"], data["check_on_loop_maps"]
    equal = all(c["equal_counts"] for c in check.values())
    return (
        f"Saved maps, maps/s (cpu, {data['maps']:,} maps of {data['map_size']}x{data['map_size']}, batch "
        f"{data['batch']}, {data['loader_workers']} loader workers): `score_map_folder` under protocol cam "
        f"{rate['cam']:.1f}, under wsolevaluation at 0.01 {rate['wsolevaluation_0.01']:.1f} and at 0.001 "
        f"{rate['wsolevaluation_0.001']:.1f}; wsolevaluation's own per-image loop, on the first {data['loop_maps']} "
        f"maps only, at 0.01 {rate['their_loop_0.01']:.1f} and at 0.001 {rate['their_loop_0.001']:.2f}. On those "
        f"maps the wsolevaluation protocol's hit counts {'equal' if equal else '**differ from**'} the loop's at "
        f"both intervals (MaxBoxAcc at 0.01 {check['0.01']['maxboxacc']:.4f}, the loop's "
        f"{check['0.01']['maxboxacc_loop']:.4f})."
    )


def photos_memory_paragraph(data: dict[str, Any]) -> str:
    samples = data["rss_mib_by_photos"]
    shown = ", ".join(f"{n:,} photos {mib:.0f}" for n, mib in samples[:: max(1, len(samples) // 5)])
    return (
        f"Your own photos, memory ({data['device']}, {data['photos']:,} JPEGs of {data['photo_wh'][0]}x"
        f"{data['photo_wh'][1]} read at {data['image_size']}x{data['image_size']}, batch {data['batch']}, "
        f"{data['photos_per_s']:.0f} photos/s): resident MiB after {shown}; {data['value']:+.1f} MiB from the first "
        "tenth to the end."
    )


def markdown(results: dict[str, Any]) -> str:
    """The generated part of ``results.md`` (the hand-written notes under ``NOTES_HEADING`` are kept apart)."""
    lines = runs_lines(results) + table_lines(results["summary"])
    paragraphs = rates_paragraphs(results["figures"])
    page = results["figures"].get("report", {})
    if "demo" in page and "large" in page:
        paragraphs.append(report_paragraph(page))
    if "photos_per_s" in results["figures"].get("photos", {}):
        paragraphs.append(photos_paragraph(results["figures"]["photos"]))
    if "rss_mib_by_photos" in results["figures"].get("photos_memory", {}):
        paragraphs.append(photos_memory_paragraph(results["figures"]["photos_memory"]))
    if "images_per_s" in (onnx := results["figures"].get("onnx_speed", {})):
        rates = "; ".join(
            f"batch {batch}: onnxruntime {r['onnxruntime']:.1f}, PyTorch {r['pytorch']:.1f}"
            for batch, r in onnx["images_per_s"].items()
        )
        paragraphs.append(
            f"The exported CAM, images/s with logits and CAM ({onnx['device']}, {onnx['arch']}, "
            f"{onnx['image_size']}x{onnx['image_size']}, onnxruntime {onnx['onnxruntime']}): {rates}."
        )
    if "maps_per_s" in results["figures"].get("score_maps", {}):
        paragraphs.append(score_maps_paragraph(results["figures"]["score_maps"]))
    for paragraph in paragraphs:
        lines += ["", paragraph]
    return "\n".join(lines) + "\n"

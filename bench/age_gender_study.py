"""What the age_gender plugin says about the identity photos of the shared data (which has no age or gender labels).

    .venv/bin/python bench/age_gender_study.py [--data /work/shared/data/faces] [--no-write]

The shared data's MANIFEST.tsv labels identities (names), expressions, multiface counts and noface images:
no ages and no genders. So this measures what can be measured without them:

- consistency: per person (10 LFW photos each for 10 people, fewer for the rest), how often the photos get
  the person's majority gender, and the spread of the expected ages over that person's photos;
- gender against public knowledge: the people in identities/ are public figures; ``WOMEN`` lists the four
  women among them (our labelling from the names, not the data's); every other person is a man.

Each photo: the default detector (blazeface) and the age_gender plugin's own ``process`` on the largest face,
its models run by ONNX Runtime on the built files (tests/test_plugins_issue19.py shows they equal Triton's
inputs' arithmetic). Writes the section "Age and gender" of docs/ACCURACY.md (between its markers).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy  # noqa: E402
import detector_study  # noqa: E402

ROOT = accuracy.ROOT
BEGIN, END = "<!-- age-gender:begin -->", "<!-- age-gender:end -->"
WOMEN = ("amy_adams", "angelina_jolie", "kate_siegel", "rose_leslie")


class LocalContext:
    def __init__(self, *repositories):
        import onnxruntime as ort

        self.ort, self.repositories, self.sessions = ort, repositories, {}

    async def infer(self, model, inputs, outputs):
        if model not in self.sessions:
            path = next(os.path.join(r, model, "1", "model.onnx") for r in self.repositories
                        if os.path.isdir(os.path.join(r, model)))
            self.sessions[model] = self.ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, self.sessions[model].run(list(outputs), inputs)))

    async def run(self, fn, *args):
        return fn(*args)


async def measure(ds) -> dict:
    from mobidem import plugins
    from mobidem.imaging import decode_encoded

    detector, ag = plugins.load("blazeface"), plugins.load("age_gender")
    ctx = LocalContext(os.path.join(ROOT, "model_repository"), str(ag.repository))
    out = {}
    for person, paths in ds.identities.items():
        for p in paths:
            image = decode_encoded(open(os.path.join(ds.root, p), "rb").read())
            faces = [d for d in await detector.detect(image, ctx) if min(d.width, d.height) >= 16]
            if not faces:
                continue
            face = max(faces, key=lambda d: d.area)
            (r,) = await ag.process(image, [face], np.zeros((1, 150, 150, 3), np.uint8), ctx)
            out[p] = {"person": person, **r}
    return out


def render(result: dict) -> str:
    s = result["summary"]
    lines = [BEGIN, "## Age and gender (the age_gender plugin)\n",
             f"Measured {result['date']} with `{result['command']}`. The shared data has **no age or gender labels** "
             "(MANIFEST.tsv labels names, expressions, face counts), so no accuracy against the data's labels exists. "
             "Measured instead, on the largest face of every identity photo (blazeface, then the plugin):\n",
             f"- **Gender against public knowledge** (our labels from the names: {len(WOMEN)} women, "
             f"{s['people'] - len(WOMEN)} men): {s['gender_right']} of {s['photos']} photos right "
             f"({100 * s['gender_right'] / s['photos']:.1f} %); women's photos {s['women_right']}/{s['women_photos']}, "
             f"men's {s['men_right']}/{s['men_photos']}; wrong: {', '.join(s['gender_wrong']) or 'none'}. With "
             f"{s['women_photos']} photos of women the data cannot tell a rate for women; the dlib-models README "
             "reports about 97.3 % on LFW.",
             f"- **Consistency**: photos that get their person's majority gender: {s['consistent']} of {s['photos']}; "
             f"over the {s['people_10']} people with 10 photos, the expected age varies by a standard deviation of "
             f"{s['age_sd_median']:.1f} years (median over people; range {s['age_sd_min']:.1f}-{s['age_sd_max']:.1f}) "
             "across photos taken years apart, against a median per-photo spread of "
             f"{s['spread_median']:.1f} years.\n",
             "| person | photos | gender (majority, share) | expected age: mean, sd over photos | mean spread |",
             "|---|---|---|---|---|"]
    for person, r in result["people"].items():
        lines.append(f"| {person} | {r['photos']} | {r['gender']} {r['share']:.0%} | {r['age_mean']:.1f}, "
                     f"{r['age_sd']:.1f} | {r['spread_mean']:.1f} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def summarise(found: dict) -> dict:
    people: dict[str, dict] = {}
    for r in found.values():
        people.setdefault(r["person"], []).append(r)
    table, consistent = {}, 0
    for person, rs in sorted(people.items()):
        genders = [r["gender"] for r in rs]
        major = max(set(genders), key=genders.count)
        consistent += genders.count(major)
        ages = np.array([r["age"] for r in rs])
        table[person] = {"photos": len(rs), "gender": major, "share": genders.count(major) / len(rs),
                         "age_mean": float(ages.mean()), "age_sd": float(ages.std()),
                         "spread_mean": float(np.mean([r["age_spread"] for r in rs]))}
    truth = {p: ("female" if r["person"] in WOMEN else "male") for p, r in found.items()}
    right = [p for p, r in found.items() if r["gender"] == truth[p]]
    women = [p for p in found if truth[p] == "female"]
    ten = [t for t in table.values() if t["photos"] >= 10]
    return {"people": table, "summary": {
        "photos": len(found), "people": len(table), "gender_right": len(right),
        "gender_wrong": [f"{p} ({found[p]['gender']} {found[p]['gender_probability']:.2f})" for p in found if p not in right],
        "women_photos": len(women), "women_right": sum(p in right for p in women),
        "men_photos": len(found) - len(women), "men_right": sum(p in right for p in found if p not in women),
        "consistent": consistent, "people_10": len(ten),
        "age_sd_median": float(np.median([t["age_sd"] for t in ten])), "age_sd_min": min(t["age_sd"] for t in ten),
        "age_sd_max": max(t["age_sd"] for t in ten),
        "spread_median": float(np.median([r["age_spread"] for r in found.values()])),
    }}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=accuracy.DEFAULT_DATA)
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    ds = accuracy.load_dataset(args.data)
    found = asyncio.run(measure(ds))
    result = {"date": dt.date.today().isoformat(), "command": ".venv/bin/python bench/age_gender_study.py",
              **summarise(found)}
    text = render(result)
    print(text)
    if not args.no_write:
        path = os.path.join(args.docs, "ACCURACY.md")
        current = open(path).read()
        if BEGIN not in current and detector_study.END in current:  # right after the detector plugins' section
            head, tail = current.split(detector_study.END, 1)
            current = head + detector_study.END + "\n\n" + BEGIN + END + tail
            with open(path, "w") as f:
                f.write(current)
        detector_study.write_section(path, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

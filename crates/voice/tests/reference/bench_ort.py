#!/usr/bin/env python3
"""Times Piper's reference path (the voice's ONNX model in onnxruntime) on given phoneme ids.

Usage: bench_ort.py MODEL.onnx IDS.json THREADS

IDS.json holds the paragraph's per-sentence id lists and those of short sentences, as written by
`cargo run --example rtf -- MODEL IDS.json`, so both engines synthesise exactly the same input.
onnxruntime gets ids, so phonemisation is not in its times; it is in candle's. Scales are the voice's defaults with
noise_w = 0, as in the Rust example.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, ids_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    with open(model + ".json") as f:
        rate = json.load(f)["audio"]["sample_rate"]
    inputs = json.load(open(ids_path))
    sentences = inputs["paragraph"]
    scales = np.array([0.667, 1.0, 0.0], dtype=np.float32)

    def run(ids):
        return sess.run(None, {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        })[0]

    run(sentences[0])  # warm-up, as in the Rust example
    start = time.perf_counter()
    first = None
    audio = 0.0
    for ids in sentences:
        out = run(ids)
        if first is None:
            first = time.perf_counter() - start
        audio += out.size / rate
    total = time.perf_counter() - start
    print(f"onnxruntime ({threads} threads): {total:.3f} s for {audio:.2f} s of audio, "
          f"RTF {total / audio:.3f}, first audio after {first * 1000:.0f} ms")
    # Piper synthesises sentence by sentence: one call each is what it does for a paragraph too.
    result = (f"result paragraph_rtf={total / audio:.4f} first_ms={first * 1000:.1f} "
              f"sentences_rtf={total / audio:.4f}")
    for i, ids in enumerate(inputs["short"]):
        start = time.perf_counter()
        run(ids)
        took = time.perf_counter() - start
        print(f"onnxruntime: short sentence {i}, first (and only) chunk after {took * 1000:.1f} ms")
        result += f" short{i}_ms={took * 1000:.2f}"
    print(result)

if __name__ == "__main__":
    main()

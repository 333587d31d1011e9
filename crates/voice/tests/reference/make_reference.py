#!/usr/bin/env python3
"""Writes reference tensors for the voice crate's equivalence tests.

Runs the voice's own ONNX model with onnxruntime, with noise disabled
(noise_scale = noise_w = 0, length_scale = 1), and saves the intermediate tensors of each
VITS stage as .npy files, one folder per case:

    ids.npy      int64 [T]           the phoneme ids fed to the model
    x.npy        f32 [1, 192, T]     text encoder hidden states   (/enc_p/encoder/Mul_2_output_0)
    m_p.npy      f32 [1, 192, T]     prior mean                    (/enc_p/Split_output_0)
    logs_p.npy   f32 [1, 192, T]     prior log-scale               (/enc_p/Split_output_1)
    logw.npy     f32 [1, 1, T]       log-durations, noise_w = 0    (/dp/Split_output_0)
    z_p.npy      f32 [1, 192, F]     expanded prior, noise_scale=0 (/Add_output_0)
    z.npy        f32 [1, 192, F]     coupling flows' output        (/flow/flows.0/Concat_output_0)
    audio.npy    f32 [N]             decoder output                (output)

and, for the decoder alone on an input that did not come from the chain, a sub-graph cut
out of the model with onnx.utils.Extractor:

    dec_in.npy   f32 [1, 192, 40]    a fixed pseudo-random latent (numpy seed 7, scale 0.8)
    dec_out.npy  f32 [N]             the decoder's output for it

Usage: make_reference.py MODEL.onnx OUT_DIR
"""

import os
import sys

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

# Phoneme ids of Piper's `^ _ (p _)* $` form. "sentence" is espeak-ng's en-us IPA for
# "Hello world, this is a test of the Sonora voice." with Piper's punctuation; "short" is a
# single phoneme, shorter than the attention window, to exercise the edge of the relative
# position band.
CASES = {
    "sentence": [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 3, 0, 35, 0, 120, 0, 62, 0,
                 122, 0, 24, 0, 17, 0, 8, 0, 3, 0, 41, 0, 74, 0, 31, 0, 3, 0, 74, 0, 38, 0, 3,
                 0, 50, 0, 3, 0, 32, 0, 120, 0, 61, 0, 31, 0, 32, 0, 3, 0, 102, 0, 34, 0, 41, 0,
                 59, 0, 3, 0, 31, 0, 120, 0, 51, 0, 122, 0, 26, 0, 27, 0, 122, 0, 88, 0, 59, 0,
                 3, 0, 34, 0, 120, 0, 54, 0, 74, 0, 31, 0, 10, 0, 2],
    "short": [1, 0, 50, 0, 2],
}

STAGES = {
    "x": "/enc_p/encoder/Mul_2_output_0",
    "m_p": "/enc_p/Split_output_0",
    "logs_p": "/enc_p/Split_output_1",
    "logw": "/dp/Split_output_0",
    "z_p": "/Add_output_0",
    "z": "/flow/flows.0/Concat_output_0",
}

DECODER_INPUT = "/Mul_7_output_0"


def session(model, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main():
    model_path, out_dir = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path)
    names = {o.name for o in model.graph.output}
    for name in STAGES.values():
        if name not in names:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            # An empty ValueInfo lets onnxruntime infer type and shape.
    sess = session(model)
    wanted = list(STAGES) + ["audio"]
    fetch = list(STAGES.values()) + ["output"]
    scales = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    for case, ids in CASES.items():
        folder = os.path.join(out_dir, case)
        os.makedirs(folder, exist_ok=True)
        feed = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        values = sess.run(fetch, feed)
        np.save(os.path.join(folder, "ids.npy"), np.array(ids, dtype=np.int64))
        for key, value in zip(wanted, values):
            value = np.asarray(value, dtype=np.float32)
            if key == "audio":
                value = value.reshape(-1)
            np.save(os.path.join(folder, f"{key}.npy"), value)

    # The decoder alone, on a latent that did not come out of the flows.
    decoder = onnx.utils.Extractor(onnx.load(model_path)).extract_model([DECODER_INPUT], ["output"])
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((1, 192, 40)) * 0.8).astype(np.float32)
    out = session(decoder).run(["output"], {DECODER_INPUT: z})[0].reshape(-1)
    folder = os.path.join(out_dir, "decoder")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "dec_in.npy"), z)
    np.save(os.path.join(folder, "dec_out.npy"), out.astype(np.float32))
    with open(os.path.join(out_dir, "DONE"), "w") as done:
        done.write("ok\n")


if __name__ == "__main__":
    main()

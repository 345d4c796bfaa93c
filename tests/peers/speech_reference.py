"""Reference speech results from the onnxruntime Python package, for the Rust tests to compare.

    speech_reference.py moonshine ENCODER.onnx DECODER.onnx AUDIO.f32...   one JSON token list per file
    speech_reference.py silero VAD.onnx AUDIO.f32                          one probability per 512-sample chunk

AUDIO.f32 holds raw little-endian float32 samples at 16 kHz. Moonshine decodes greedily with
its key/value cache (start token 1, stop at 2, at most 6.5 tokens per second of audio); Silero
takes 64 samples of context before each 512-sample chunk and carries its state.
"""
import json
import math
import sys

import numpy as np
import onnxruntime as ort


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with open(path, "rb") as f:
        if f.read(8)[4:8] == b"ORTM":  # ONNX Runtime's own format, whatever the file's name
            options.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def moonshine(encoder_path, decoder_path, files):
    encoder, decoder = session(encoder_path), session(decoder_path)
    names = [o.name for o in decoder.get_outputs()]
    for path in files:
        audio = np.fromfile(path, dtype="<f4")
        hidden = encoder.run(None, {"input_values": audio[None], "attention_mask": np.ones((1, len(audio)), np.int64)})[0]
        past = {f"past_key_values.{layer}.{part}.{kv}": np.zeros((1, 8, 0, 36), np.float32)
                for layer in range(6) for part in ("decoder", "encoder") for kv in ("key", "value")}
        tokens, last = [], 1
        for step in range(max(1, math.ceil(len(audio) / 16000 * 6.5))):
            feed = {"input_ids": np.array([[last]], np.int64), "encoder_hidden_states": hidden,
                    "encoder_attention_mask": np.ones((1, hidden.shape[1]), np.int64),
                    "use_cache_branch": np.array([step > 0])}
            feed.update(past)
            out = dict(zip(names, decoder.run(None, feed)))
            for name in past:
                if step == 0 or ".decoder." in name:
                    past[name] = out[name.replace("past_key_values", "present")]
            last = int(out["logits"][0, -1].argmax())
            if last == 2:
                break
            tokens.append(last)
        print(json.dumps(tokens), flush=True)


def silero(model_path, path):
    model = session(model_path)
    audio = np.fromfile(path, dtype="<f4")
    audio = np.concatenate([audio, np.zeros((-len(audio)) % 512, np.float32)])
    state, context = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32)
    for start in range(0, len(audio), 512):
        window = np.concatenate([context, audio[start:start + 512]])
        out, state = model.run(None, {"input": window[None], "state": state, "sr": np.array(16000, np.int64)})
        context = window[-64:]
        print(float(out[0, 0]))


if __name__ == "__main__":
    if sys.argv[1] == "moonshine":
        moonshine(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "silero":
        silero(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown reference {sys.argv[1]!r}: moonshine or silero")

"""OpenAI's own Python SDK against Sonora's /v1/audio/speech, for the gateway's test `openai`.

One process runs every case (starting Python and importing the SDK takes longer than a short
synthesis) and prints one JSON object: the SDK's version and, per case, where the audio went or
what the SDK raised. The Rust test decodes the files and checks the errors.

    python openai_sdk.py BASE_URL API_KEY OUT_DIR CASES_JSON

The client is made as a user would make it for another server: only `base_url` and `api_key`
differ from the defaults. Each case is {"name", "call": "create" | "stream" | "sse", "args"}.
"""

import json
import os
import sys

import openai


def run(client, case, out_dir):
    path = os.path.join(out_dir, case["name"])
    args = case["args"]
    result = {"name": case["name"]}
    try:
        if case["call"] == "create":
            response = client.audio.speech.create(**args)
            result["content_type"] = response.response.headers.get("content-type")
            response.write_to_file(path)
        elif case["call"] == "stream":
            with client.audio.speech.with_streaming_response.create(**args) as response:
                result["content_type"] = response.headers.get("content-type")
                chunks = 0
                with open(path, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                        chunks += 1
                result["chunks"] = chunks
        elif case["call"] == "sse":
            # The SDK hands the event stream over as bytes; the test parses the events.
            with client.audio.speech.with_streaming_response.create(
                stream_format="sse", **args
            ) as response:
                result["content_type"] = response.headers.get("content-type")
                response.stream_to_file(path)
        else:
            raise ValueError(case["call"])
        result["file"] = path
    except openai.APIStatusError as error:
        result["error"] = {
            "class": type(error).__name__,
            "status": error.status_code,
            "message": error.message,
            "param": error.param,
            "code": error.code,
            "type": error.type,
        }
    return result


def main():
    base_url, api_key, out_dir, cases = sys.argv[1:5]
    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    results = [run(client, case, out_dir) for case in json.loads(cases)]
    print(json.dumps({"version": openai.__version__, "results": results}))


if __name__ == "__main__":
    main()

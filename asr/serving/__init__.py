"""Serving a trained model: `http` (asr serve: the OpenAI-compatible endpoint and the web page in
static/), `onnx_export` (asr export onnx) and `onnx_runtime` (transcription from the ONNX file
without torch). All of them transcribe through asr.transcribe.Pipeline."""

"""Exporting trained models for other runtimes (ONNX); see personsearch.export.onnx."""

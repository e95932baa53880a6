"""Serving: the real ``tritonserver``, its temporary files, access rules, supervision, and the
python-backend twin that runs each ``model.onnx`` with onnxruntime.

Needs neither Chainer, cv2, gymnasium nor the ALE; imports ``core`` (and the generated
``kserve`` stubs) only.
"""

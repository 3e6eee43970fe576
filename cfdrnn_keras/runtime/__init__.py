"""The inference side: a photo or a video in, 68 landmarks per face out.

Needs numpy, OpenCV and LiteRT (`ai-edge-litert`) only — no TensorFlow, no Keras — so the plain
install runs the packaged models. A `.keras` file or a SavedModel directory can be run too; their
backends live on the model side (`cfdrnn_keras.model.backends`) and are imported only when such a
model is asked for, which needs the `[train]` extra.

- `packaged`: the models that ship in the package, by name (`fast`, ...), and where their files are.
- `backends`: the LiteRT backend and `load_backend`, which picks one for a path or a name.
- `face_detector`: BlazeFace, and boxes mapped to the 68-point-box convention.
- `landmarker`: `LandmarkDetector` and `FaceLandmarks`.
- `video`, `drawing`: frames and tracks, pictures of the results.
"""

"""mobidem's built-in plugins: BlazeFace detectors, the dlib ResNet embedder, the mini-Xception
expression classifier and the multi-task model that runs both in one Triton call.

They use the same plugin interface (mobidem.plugins) and entry points (mobidem.plugins group)
as any installed plugin; the server has no special case for them.
"""

"""Synthetic talking-head data: the demo head and its rig, espeak-ng speech with phoneme timings,
coarticulated articulation, synthetic speakers, and the corpus writer (`python -m model_core synth`)."""

"""Dataset preparation before training: tagging, captioning, caption edits, crops and class images.

What lives here (the cores of the dataset tools in ``tools/``; each tool is argument parsing plus
one call into this package):

- :mod:`files`: image discovery (flat or recursive), caption paths, atomic text writes, write probes.
- :mod:`tags`: caption/tag text operations (split, trigger words, removal, replacement, dedupe,
  sort, weight stripping, kohya's cleaning rules) and tag-frequency reports.
- :mod:`wd14`: WD14-style ONNX taggers (``model.onnx`` + ``selected_tags.csv``) through onnxruntime.
- :mod:`blip`: BLIP captioning through transformers.
- :mod:`focus`: where the subject is (faces with OpenCV's Haar cascades, else spectral-residual
  saliency, else the centre); :mod:`crop`: resize + crop of each image into the exact bucket the
  trainer assigns (the bucket code of :mod:`library.dataset`).
- :mod:`class_images`: prior-preservation images from a base model, resumable.

May import: ``library.dataset``, ``library.checkpoint``, ``library.io``, ``library.models``,
``library.errors`` (third-party: numpy, Pillow, OpenCV, torch and, lazily inside functions,
onnxruntime, transformers, diffusers and huggingface_hub). Never ``sd_train``, ``networks`` or
``tools``; no argparse.
"""

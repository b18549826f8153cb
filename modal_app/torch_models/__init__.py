"""The torch model family: pair classifiers on caption crops, their checkpoints and training.

Everything here needs the ``torch`` extra (``pip install -e .[torch]``) except
:mod:`modal_app.torch_models.device`, which only decides (pure functions, testable anywhere). The
rest of ``modal_app`` reaches this package through :func:`modal_app.models.get_model` and
:func:`modal_app.models.inspect_checkpoint`, which import it only for a torch checkpoint: the
builtin model, the demo and the default install never import torch.

* :mod:`.resnet_pair` — the bundled architecture (torchvision ResNet 18/50 on frame 1, frame 2 and
  their difference, plus spatial features; 5 classes);
* :mod:`.checkpoint` — ``.pt`` (``{config, model_state_dict}``) and ``.safetensors`` files, read
  without unpickling code, and the architecture factory named in the config (allow-listed);
* :mod:`.runner` — a loaded model on its device (CUDA when there is one), with autocast;
* :mod:`.train` — training on synthetic caption videos (``models train-synthetic``).
"""

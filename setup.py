"""Packaging for nnunet-noisylabels."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = "nnunet_noisylabels.pth"


class build_py_with_pth(build_py):
    """Ship the start-up hook that registers the trainers with nnU-Net (see nnunet_noisylabels/_autoenv.py)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(
    name="nnunet-noisylabels",
    version="0.1.0",
    description="Noisy- and weak-label segmentation for nnU-Net v2: noise identification, label revision and "
                "noise-robust co-training (Huang et al., Neural Networks 2024).",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_noisylabels", "nnunet_noisylabels.*"]),
    # the external-trainer folder is imported by nnU-Net as a plain folder, not as a package
    package_data={"nnunet_noisylabels": ["nnunet_ext/*.py"]},
    include_package_data=False,
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "torch",
        "numpy",
        "scipy",
        "scikit-image",
        "SimpleITK",
        "nibabel",
        "batchgenerators",
        "batchgeneratorsv2",
        "acvl-utils",
        "dynamic-network-architectures",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_nl_env = nnunet_noisylabels.cli.env:main",
            "nnUNetv2_nl_demo = nnunet_noisylabels.cli.demo:main",
            "nnUNetv2_nl_corrupt = nnunet_noisylabels.cli.corrupt:main",
            "nnUNetv2_nl_revise = nnunet_noisylabels.cli.revise:main",
            "nnUNetv2_nl_export = nnunet_noisylabels.cli.export:main",
            "nnUNetv2_nl_find_issues = nnunet_noisylabels.cli.find_issues:main",
            "nnUNetv2_nl_plan_cpu = nnunet_noisylabels.cli.plan_cpu:main",
        ],
    },
    cmdclass={"build_py": build_py_with_pth},
)

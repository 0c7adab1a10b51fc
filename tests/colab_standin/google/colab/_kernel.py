"""The kernel class the test's kernelspec starts (--IPKernelApp.kernel_class=google.colab._kernel.Kernel)."""

from ipykernel.ipkernel import IPythonKernel
from traitlets import Type

from ._shell import Shell


class Kernel(IPythonKernel):
    """IPython's kernel with Colab's shell class."""

    shell_class = Type(Shell)

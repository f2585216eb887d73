"""tornado-ai-stream: a production-grade SSE gateway for OpenRouter-compatible LLM APIs."""

from setuptools import find_packages, setup

PACKAGES = ("server", "middleware", "handlers", "app", "client")  # the core, the edge, the handlers, the root, the terminal client

setup(
    name="tornado-ai-stream",
    version="0.1.0",
    description="Stream LLM answers from OpenRouter (or any OpenAI-compatible API) to clients as Server-Sent Events",
    python_requires=">=3.11",
    packages=find_packages(include=[f"{package}{suffix}" for package in PACKAGES for suffix in ("", ".*")]),
    py_modules=["run"],
    include_package_data=True,
    package_data={"server": ["static/*"]},
    install_requires=[
        "tornado>=6.4,<7",
        "httptools>=0.9,<1",
        "python-dotenv>=1.0,<2",
        "colorama>=0.4.6,<0.5",
        "prometheus-client>=0.20,<1",
        "uvloop>=0.19,<1",
        "orjson>=3.9,<4",
        "redis>=5,<9",
    ],
    extras_require={
        "dev": [
            "pytest>=8,<10",
            "pytest-tornasync==0.6.0.post2",
            "pytest-cov>=5,<8",
            "hypothesis>=6.100,<7",
            "ruff>=0.6,<1",
            "openai>=1.40,<4",
            "langchain-openai>=1.0,<2",
            "pydantic>=2.7,<3",
            "supervisor>=4.2,<5",
            "playwright>=1.45,<2",
        ],
    },
)

"""Build script. Reads everything from settings.ini (nbdev 2 layout); no pkg_resources."""
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

cfg_file = Path(__file__).parent / "settings.ini"
config = ConfigParser(delimiters=["="])
config.read(cfg_file, encoding="utf-8")
cfg = config["DEFAULT"]

for k in "version description keywords author author_email".split():
    assert k in cfg, f"settings.ini is missing {k}"

licenses = {"apache2": "Apache-2.0", "mit": "MIT"}  # SPDX expressions
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.10 3.11 3.12 3.13".split()

lic = licenses.get(cfg["license"].lower(), cfg["license"])
min_python = cfg["min_python"]
requirements = shlex.split(cfg.get("requirements", ""))
dev_requirements = shlex.split(cfg.get("dev_requirements", ""))
console_scripts = [s.strip() for s in cfg.get("console_scripts", "").splitlines() if s.strip()]
readme = Path(__file__).parent / "README.md"

class build_py_with_runbooks(build_py):
    "Ship nbs/runbooks/*.ipynb as package data esa_nb/runbooks/ (nbs/ stays the one source)."
    def run(self):
        super().run()
        src = Path(__file__).parent / "nbs" / "runbooks"
        dst = Path(self.build_lib) / cfg["lib_path"] / "runbooks"
        if src.is_dir():
            self.mkpath(str(dst))
            for nb in sorted(src.glob("*.ipynb")): self.copy_file(str(nb), str(dst / nb.name))


setuptools.setup(
    cmdclass={"build_py": build_py_with_runbooks},
    name=cfg["lib_name"].replace("_", "-"),
    version=cfg["version"],
    license=lic,
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ]
    + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=">=" + min_python,
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else cfg["description"],
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    description=cfg["description"],
    keywords=cfg["keywords"],
    author=cfg["author"],
    author_email=cfg["author_email"],
)

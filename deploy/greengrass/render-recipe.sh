#!/bin/sh
# Writes the Greengrass recipe for this version of the agent: deploy/greengrass/recipe.yaml with
# {{VERSION}} replaced by the osprey-agent package's version (agent/Cargo.toml, the workspace
# version), so the ComponentVersion and the artifact URIs come from one source.
#
#   sh deploy/greengrass/render-recipe.sh OUT_DIR     writes OUT_DIR/recipe.yaml, prints the version
#
# cross/build.sh --dist DIR runs it beside the binaries it copies to DIR.
set -eu

out=${1:?usage: sh deploy/greengrass/render-recipe.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
# `cargo pkgid` prints path+file:///…/agent#osprey-agent@X.Y.Z (or …#X.Y.Z).
version=$(cd "$here/../.." && cargo pkgid -p osprey-agent | sed 's/.*[#@]//')
case $version in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "render-recipe: cannot read the agent's version (got '$version')" >&2; exit 1 ;;
esac
mkdir -p "$out"
sed "s/{{VERSION}}/$version/g" "$here/recipe.yaml" >"$out/recipe.yaml.tmp"
mv -f "$out/recipe.yaml.tmp" "$out/recipe.yaml"
echo "$version"

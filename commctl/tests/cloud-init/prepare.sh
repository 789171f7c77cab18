#!/bin/sh
# Extracts Debian's cloud-init and the Python modules it needs (not installed on the machine) into DIR,
# once: dpkg -x of the packages fetched with apt-get download. Usage: prepare.sh DIR
set -eu
DIR=$1
[ -x "$DIR/root/usr/bin/cloud-init" ] && exit 0
mkdir -p "$DIR/debs"
cd "$DIR/debs"
apt-get download -q cloud-init python3-jinja2 python3-markupsafe python3-jsonschema python3-attr \
    python3-pyrsistent python3-configobj python3-six python3-jsonpatch python3-json-pointer python3-netifaces \
    python3-requests python3-urllib3 python3-idna python3-certifi python3-charset-normalizer python3-chardet \
    python3-serial python3-yaml python3-oauthlib >/dev/null 2>&1
rm -rf "$DIR/root.new"
mkdir "$DIR/root.new"
for deb in ./*.deb; do dpkg -x "$deb" "$DIR/root.new"; done
mv "$DIR/root.new" "$DIR/root"

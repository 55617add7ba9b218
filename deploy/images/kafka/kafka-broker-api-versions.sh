#!/bin/bash
# The path and arguments of the public image's tool, which the compose healthcheck calls:
# here it only checks that the broker accepts connections on --bootstrap-server.
set -eu
server=localhost:9092
while (($#)); do
  case $1 in --bootstrap-server) server=$2; shift 2 ;; *) shift ;; esac
done
exec 3<>"/dev/tcp/${server%:*}/${server##*:}"

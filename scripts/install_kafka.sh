#!/usr/bin/env bash
# Resolve the Apache Kafka broker (deploy/kafka/pom.xml: kafka_2.13 + its Log4j 2 backend) from Maven
# Central into one folder of jars, for `nextclick broker --engine kafka` and the test suite.
#   scripts/install_kafka.sh            # into ${NEXTCLICK_KAFKA_HOME:-~/.cache/nextclick/kafka}/libs
# Needs Java 17+ and Maven; without them it says so and exits 0 (the embedded Tansu broker still works).
set -euo pipefail
cd "$(dirname "$0")/.."
home="${NEXTCLICK_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/nextclick/kafka}"
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  echo "install_kafka: no Java or no Maven here: skipping Apache Kafka (nextclick uses the embedded Tansu broker)"
  exit 0
fi
staging="$(mktemp -d "${TMPDIR:-/tmp}/nextclick-kafka.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$staging/libs"
mkdir -p "$home"
rm -rf "$home/libs.old"
[ -d "$home/libs" ] && mv "$home/libs" "$home/libs.old"
mv "$staging/libs" "$home/libs"
rm -rf "$home/libs.old"
echo "install_kafka: Apache Kafka $(ls "$home/libs" | sed -n 's/^kafka_2.13-\(.*\)\.jar$/\1/p') in $home/libs"

#!/bin/sh
# Install the Debian packages the denoiser corpus is built from (run as root), then build it with
#   nice -n 10 python recipes/build_corpus.py --out corpus
# About 700 MB installed (largest: warzone2100-data 180 MB, fillets-ng-data 78 MB). Which package
# feeds which split is listed in recipes/build_corpus.py (PACKAGE_SOURCES) and docs/corpus.md.
# Reserved for evaluation only (test split): asterisk-core-sounds-{fr,it,ru}-g722, openttd-opensfx.
set -eu
usage() { sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; }  # the comment above, as help
case "${1:-}" in -h|--help) usage; exit 0;; -*) usage >&2; exit 2;; esac

TOOLS="ffmpeg espeak-ng flite festival"

SPEECH="asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722
  fillets-ng-data-cs fillets-ng-data-nl
  asterisk-prompt-es-co asterisk-prompt-it-menardi-wav asterisk-prompt-fr-armelle
  klettres-data ktuberling-data"

TTS_VOICES="festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k festvox-itapc16k
  festvox-czech-dita festvox-czech-machac festvox-czech-krb festvox-suopuhe-lj festvox-suopuhe-mv
  festvox-ca-ona-hts"

NOISE="fillets-ng-data lugaru-data freegish-data btanks-data frozen-bubble-data lincity-ng-data
  extremetuxracer-data sound-icons heroes-sound-effects asterisk-moh-opsound-wav
  teeworlds-data neverball-common warzone2100-data pingus-data alienblaster-data"

# Held out for the test set: never used for training or tuning.
EVALUATION="asterisk-core-sounds-fr-g722 asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722
  openttd-opensfx pocketsphinx-testdata bucklespring-data"

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086  # the lists are meant to split into words
apt-get install -y --no-install-recommends $TOOLS $SPEECH $TTS_VOICES $NOISE $EVALUATION

#!/usr/bin/env bash
# Regenerates the example clips with Debian's espeak-ng and sox (apt-get install espeak-ng sox).
# Kept in the repository so nothing is generated at run time; about 120 KB in all.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -s 140 -w "$tmp/bench.wav" "the drill is making a grinding noise"
espeak-ng -s 140 -w "$tmp/note.wav" "how do I change the saw blade"
espeak-ng -s 140 -w "$tmp/office.wav" "the spare key is in the top drawer"
# Mono 16 kHz: the workshop microphone as OGG Vorbis, the voice note as WAV.
sox "$tmp/bench.wav" -r 16000 -c 1 bench_mic.ogg
sox "$tmp/note.wav" -r 16000 -c 1 -b 16 voice_note.wav
sox "$tmp/office.wav" -r 16000 -c 1 office_mic.ogg

#!/usr/bin/env bash
# Rebuilds the answering-machine-detection set in this folder, deterministically, from text:
# espeak-ng (speech) + sox (silence, beeps, line noise, telephone band, G.711 µ-law).
#   Debian: apt-get install espeak-ng sox     (tested with espeak-ng 1.51, SoX 14.4.2)
#   ./generate.sh            # rewrites *.wav and labels.csv
# Every file: 8 kHz mono G.711 µ-law WAV, band-limited 200–3400 Hz, peak about -6 dBFS.
# labels.csv columns (times in ms from the start of the file, "-" when not applicable):
#   file, label (human|machine), speech_start_ms (first speech), first_end_ms (end of the first
#   utterance: the human's pickup phrase, or the machine's whole greeting), beep_ms (beep start),
#   beep_hz, what
set -euo pipefail
cd "$(dirname "$0")"
command -v espeak-ng >/dev/null && command -v sox >/dev/null || { echo "need espeak-ng and sox" >&2; exit 1; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
sox() { command sox -R -D -V1 "$@"; }
S="-r 8000 -c 1 -b 16 -e signed-integer"
rm -f ./*.wav
echo "file,label,speech_start_ms,first_end_ms,beep_ms,beep_hz,what" > labels.csv

ms() { soxi -D "$1" | awk '{printf "%d", $1*1000 + 0.5}'; }

# mk NAME LABEL NOISE(none|white:VOL|brown:VOL) WHAT PIECE...
#   PIECE: "sil MS" | "say VOICE RATE PITCH TEXT" | "tone HZ MS" | "end" (marks the end of the
#   first utterance when it is not the first "say")
mk() {
  local name=$1 label=$2 noise=$3 what=$4; shift 4
  local t=0 i=0 start=- first=- beep=- hz=- parts=() mark_on_say=1
  for p in "$@"; do
    i=$((i+1)); local f="$T/p$i.wav"
    read -r kind a b c d <<<"$p"
    case $kind in
      sil) sox -n $S "$f" trim 0 "$(awk "BEGIN{print $a/1000}")" ;;
      say) espeak-ng -v "$a" -s "$b" -p "$c" -w "$T/raw.wav" "$d"
           sox "$T/raw.wav" $S "$f" silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse
           [ "$start" = - ] && start=$t ;;
      tone) sox -n $S "$f" synth "$(awk "BEGIN{print $b/1000}")" sine "$a" vol 0.5 fade t 0.005 0 0.005
            beep=$t; hz=$a ;;
      end) first=$t; mark_on_say=0; continue ;;
    esac
    parts+=("$f"); t=$((t + $(ms "$f")))
    [ "$kind" = say ] && [ "$mark_on_say" = 1 ] && [ "$first" = - ] && first=$t
    [ "$kind" = say ] && [ "$label" = machine ] && [ "$mark_on_say" = 1 ] && first=$t
  done
  sox "${parts[@]}" "$T/cat.wav"
  sox "$T/cat.wav" "$T/band.wav" highpass 200 lowpass 3400 gain -n -6
  if [ "$noise" != none ]; then
    sox -R -n $S "$T/noise.wav" synth "$(soxi -D "$T/band.wav")" "${noise%%:*}noise" vol "${noise##*:}"
    sox -m "$T/band.wav" "$T/noise.wav" "$T/mix.wav"; mv "$T/mix.wav" "$T/band.wav"
  fi
  sox "$T/band.wav" -r 8000 -c 1 -e u-law -b 8 "$name.wav"
  echo "$name.wav,$label,$start,$first,$beep,$hz,$what" >> labels.csv
}

# --- human pickups: a short phrase, then the silence of someone waiting for an answer ---------
mk h01_hello human none "Hello? (en-us)" "sil 400" "say en-us 160 50 Hello?" "sil 3000"
mk h02_thomas human none "Yes, Thomas speaking (en-gb)" "sil 300" "say en-gb 170 45 Yes, Thomas speaking." "sil 3000"
mk h03_allo human none "Allô ? (fr)" "sil 500" "say fr-fr 160 50 Allô ?" "sil 3000"
mk h04_late_hello human none "2 s of silence, then Hello?" "sil 1800" "say en-us+f3 165 60 Hello?" "sil 2500"
mk h05_noisy_hello human white:0.02 "Hello? on a hissing line" "sil 600" "say en-gb-x-rp 160 50 Hello?" "sil 3000"
mk h06_hi human none "Hi. (female)" "sil 300" "say en-us+f3 180 70 Hi." "sil 3000"
mk h07_whos_this human none "Hello, who's this?" "sil 500" "say en-us 175 50 Hello, who's this?" "sil 3000"
mk h08_yeah human none "Yeah? (male, low)" "sil 700" "say en-us+m3 150 30 Yeah?" "sil 3000"
mk h09_oui_allo human none "Oui, allô ? (fr female)" "sil 400" "say fr-fr+f2 170 60 Oui, allô ?" "sil 3000"
mk h10_slow_hello human none "Hello? slowly (female)" "sil 500" "say en-us+f4 120 60 Hello?" "sil 3000"
mk h11_noisy_thomas human brown:0.15 "Yes, Thomas speaking, rumbling line" "sil 500" "say en-us+m2 180 45 Yes, Thomas speaking." "sil 3000"
mk h12_speaking human none "Speaking. (en-gb)" "sil 400" "say en-gb-x-rp 170 50 Speaking." "sil 3000"
mk h13_sarah_here human none "Hello, Sarah here. (fast, female)" "sil 400" "say en-us+f2 190 65 Hello, Sarah here." "sil 3000"
mk h14_good_morning human none "Good morning! (en-gb)" "sil 600" "say en-gb 160 50 Good morning!" "sil 3000"
mk h15_late_yes human none "2.2 s of silence, then Yes?" "sil 2200" "say en-gb+m1 160 45 Yes?" "sil 2500"
mk h16_hello_hello human none "Hello? ... Hello? (0.9 s apart)" "sil 400" "say en-us 165 50 Hello?" "end" "sil 900" "say en-us 165 55 Hello?" "sil 2500"
mk h17_hallo human none "Hallo? (de)" "sil 500" "say de 160 50 Hallo?" "sil 3000"
mk h18_bonjour human none "Bonjour. (fr-be)" "sil 300" "say fr-be 165 50 Bonjour." "sil 3000"
mk h19_hey_fast human none "Hey. (fast)" "sil 350" "say en-us-nyc 220 50 Hey." "sil 3000"
mk h20_noisy_late_allo human white:0.03 "1.2 s of hiss, then Allô ?" "sil 1200" "say fr-fr+m1 160 45 Allô ?" "sil 2800"

# --- voicemail greetings -------------------------------------------------------------------------
mk m01_thomas_beep machine none "personal greeting, 1 kHz beep" "sil 400" "say en-us 160 50 Hi, you've reached Thomas. I can't take your call right now, please leave a message after the tone." "sil 500" "tone 1000 500" "sil 1000"
mk m02_thomas_nobeep machine none "personal greeting, no beep (en-gb)" "sil 400" "say en-gb 150 45 Hi, you've reached Thomas. I can't take your call right now, please leave a message." "sil 2500"
mk m03_carrier_us machine none "carrier: The person you are calling is not available, 850 Hz beep" "sil 300" "say en-us+f3 170 55 The person you are calling is not available. Please leave a message after the tone." "sil 400" "tone 850 400" "sil 1000"
mk m04_carrier_gb machine none "carrier: The number you have dialled is not available, 1400 Hz beep" "sil 500" "say en-gb-x-rp 150 50 The number you have dialled is not available. Please leave your message after the beep." "sil 600" "tone 1400 600" "sil 1000"
mk m05_short_beep machine none "short: Leave a message, then a beep" "sil 400" "say en-us+f3 170 60 Leave a message." "sil 300" "tone 1000 500" "sil 1500"
mk m06_missed_nobeep machine none "short greeting, no beep (fast)" "sil 300" "say en-us 190 50 Sorry I missed your call. Leave a message." "sil 2500"
mk m07_fr_perso machine none "fr personal greeting, 440 Hz beep" "sil 500" "say fr-fr 160 50 Bonjour, vous êtes bien sur la messagerie de Thomas. Laissez un message après le bip." "sil 500" "tone 440 700" "sil 1000"
mk m08_fr_carrier machine none "fr carrier greeting, 1 kHz beep" "sil 400" "say fr-fr+f3 170 55 Votre correspondant n'est pas disponible pour le moment. Veuillez laisser un message après le bip sonore." "sil 400" "tone 1000 400" "sil 1000"
mk m09_long_slow machine none "long business greeting, slow, 2 kHz short beep" "sil 400" "say en-us+f2 130 60 Hello, this is Acme Dental. Our office is closed. Please leave your name and number and we will call you back." "sil 500" "tone 2000 250" "sil 1000"
mk m10_fast_mike machine none "fast: Hey it's Mike, leave a message, 600 Hz beep" "sil 300" "say en-us-nyc 230 50 Hey it's Mike, leave a message." "sil 400" "tone 600 500" "sil 1500"
mk m11_noisy_beep machine white:0.02 "greeting on a hissing line, 800 Hz beep" "sil 500" "say en-gb 160 50 You have reached the voicemail of Anna. Please leave a message after the tone." "sil 500" "tone 800 500" "sil 1000"
mk m12_digits machine none "number readout, 1200 Hz beep" "sil 400" "say en-gb+m3 170 45 You have reached 5 5 5, 0 1 2 3. Please leave a message." "sil 500" "tone 1200 500" "sil 1000"
mk m13_late_greeting machine none "1.5 s of silence, then a greeting, 1 kHz beep" "sil 1500" "say en-us+f4 165 60 Hi, this is Anna. Leave a message." "sil 400" "tone 1000 400" "sil 1500"
mk m14_de machine none "de greeting, 1 kHz beep" "sil 400" "say de 160 50 Hallo, hier ist der Anrufbeantworter von Thomas. Bitte sprechen Sie nach dem Signalton." "sil 500" "tone 1000 500" "sil 1000"
mk m15_please_leave machine none "very short: Please leave a message, short 420 Hz beep" "sil 400" "say en-us+m2 175 45 Please leave a message." "sil 300" "tone 420 200" "sil 2000"
mk m16_unreachable machine none "carrier, no voicemail: subscriber cannot be reached" "sil 300" "say en-gb-x-rp 160 50 The subscriber cannot be reached. Please try again later." "sil 2500"
mk m17_hi_pause machine none "Hi! ... 0.7 s pause ... rest of greeting (the human-like opening), 1 kHz beep" "sil 400" "say en-us+f3 170 65 Hi!" "sil 700" "say en-us+f3 170 65 You've reached Laura, leave a message." "sil 500" "tone 1000 500" "sil 1000"
mk m18_slow_beep machine none "slow male, long 1 kHz beep" "sil 400" "say en-us+m1 120 40 I'm not available right now. Please leave a message after the beep." "sil 500" "tone 1000 1000" "sil 1000"
mk m19_rumble_beep machine brown:0.1 "greeting on a rumbling line, 750 Hz beep" "sil 400" "say en-gb-scotland 160 50 Hello, you've reached Ross. Leave a message after the tone." "sil 500" "tone 750 500" "sil 1000"
mk m20_fr_be_nobeep machine none "fr-be greeting, no beep" "sil 400" "say fr-be 170 50 Bonjour, je ne suis pas disponible. Rappelez plus tard." "sil 2500"
echo "wrote $(($(wc -l < labels.csv) - 1)) files, $(du -ch ./*.wav | tail -1 | cut -f1)"

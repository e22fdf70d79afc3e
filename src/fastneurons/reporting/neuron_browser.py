"""The report's neuron browser: a card per detector and positional neuron, and a search box for (layer, neuron).

Self-contained: the data is inline JSON, the script inline JS, nothing is fetched. What the page
carries is bounded: cards for at most `MAX_CARDS` detector/positional neurons (strongest first), and
a one-line summary (frequency, I, C_k) for every neuron only while the model has at most
`MAX_SUMMARY_NEURONS` neurons in the recorded layers; the browser says which neurons it holds.
`fastneurons show` answers for any neuron of any store.
"""
from __future__ import annotations

import json

import numpy as np

MAX_CARDS = 2000  # detector + positional neurons with a card
MAX_SUMMARY_NEURONS = 65_536  # every neuron gets a summary row up to this many (SmolLM2: 46,080)
MAX_TRIGGERS = 12  # n-grams listed per detector card
CURVE_POINTS = 128  # fr(p) is averaged into at most this many points for the card's sparkline


def _round(values, digits: int = 4) -> list:
    return [None if v is None or not np.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(values, float)]


def _curve(fr: np.ndarray) -> list:
    """fr(p) in at most CURVE_POINTS equal bins (mean of the kept positions of each bin)."""
    bins = np.array_split(fr, min(CURVE_POINTS, fr.size)) if fr.size else []
    return _round([np.nanmean(b) if np.isfinite(b).any() else np.nan for b in bins], 3)


def _card_keys(results, detectors: list, positional: list) -> list:
    """The (layer, neuron) pairs with a card: detectors by activations, then positional neurons by I."""
    ranked = [(0, -row["mass"], row["layer"], row["neuron"]) for row in detectors]
    ranked += [(1, -row["mi"], row["layer"], row["neuron"]) for row in positional]
    keys = []
    for _, _, layer, neuron in sorted(ranked):
        if (layer, neuron) not in keys:
            keys.append((layer, neuron))
    return keys


def browser_data(results, counts, detectors: list, positional: list) -> dict:
    """JSON-ready data of the browser: cards, per-neuron summaries (small models) and what is carried."""
    all_keys = _card_keys(results, detectors, positional)
    keys = all_keys[:MAX_CARDS]
    cards = {f"{layer}:{neuron}": {"layer": layer, "neuron": neuron,
                                   "frequency": float(results.dead[layer].frequency[neuron]), "detector": [],
                                   "positional": None} for layer, neuron in keys}
    for row in detectors:
        card = cards.get(f"{row['layer']}:{row['neuron']}")
        if card is None:
            continue
        ngrams = row["ngrams"].split(" | ")
        active, seen = row["ngram_active"].split(), row["ngram_seen"].split()
        card["detector"].append({
            "k": row["k"], "coverage_size": row["coverage_size"], "mass": row["mass"],
            "triggers": [[g, int(a), int(s)] for g, a, s in list(zip(ngrams, active, seen))[:MAX_TRIGGERS]],
            "more": max(0, len(ngrams) - MAX_TRIGGERS), "suppresses": row.get("suppresses"),
            "promoted": row.get("top_promoted"), "suppressed": row.get("top_suppressed")})
    by_layer = {}
    for row in positional:
        if f"{row['layer']}:{row['neuron']}" in cards:
            by_layer.setdefault(row["layer"], []).append(row)
    seen_positions = np.asarray(counts.pos_seen, dtype=np.float64) if by_layer else None
    for layer, rows in by_layer.items():
        pos_active = np.asarray(counts.pos_active(layer))
        for row in rows:
            with np.errstate(invalid="ignore", divide="ignore"):
                fr = np.where(seen_positions > 0, pos_active[:, row["neuron"]] / seen_positions, np.nan)
            cards[f"{layer}:{row['neuron']}"]["positional"] = {
                "type": row["type"], "strength": row["strength"], "mi": float(row["mi"]),
                "corrected": row["corrected"], "mean_fr": float(row["frequency"]), "curve": _curve(fr)}
    total = results.num_neurons * len(results.layers)
    summary = None
    if total <= MAX_SUMMARY_NEURONS:
        summary = {"layers": list(results.layers),
                   "frequency": {str(l): _round(results.dead[l].frequency) for l in results.layers},
                   "mi": {str(l): _round(p.mi) for l, p in results.positional.items()},
                   "coverage": {str(k): {str(l): c.sizes.tolist() for l, c in per_layer.items()}
                                for k, per_layer in results.coverage.items()}}
    carried = (f"{len(cards):,} cards (every detector and positional neuron)" if len(keys) == len(all_keys) else
               f"{len(cards):,} cards: the first {MAX_CARDS:,} of {len(all_keys):,} detector and positional neurons "
               "(detectors by activations, then positional neurons by I)")
    carried += (f"; a summary line for all {total:,} neurons" if summary is not None else
                f"; no summary lines ({total:,} neurons is more than {MAX_SUMMARY_NEURONS:,})")
    return {"num_neurons": results.num_neurons, "layers": list(results.layers), "cards": cards,
            "summary": summary, "carried": carried}


_SCRIPT = r"""
(function(){
const root=document.currentScript.parentElement, data=JSON.parse(root.querySelector('script.nb-data').textContent);
const esc=s=>String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const num=(x,d)=>x===null||x===undefined?'–':Number(x).toPrecision(d||3);
function spark(curve){
  const pts=curve.map((y,i)=>y===null?null:[i*300/Math.max(1,curve.length-1),40-38*y]).filter(p=>p);
  return '<svg class="nb-spark" width="300" height="42" viewBox="0 0 300 42"><rect width="300" height="42" fill="#f6f7f9"/>'+
    '<polyline fill="none" stroke="#3465a4" stroke-width="1.5" points="'+pts.map(p=>p.join(',')).join(' ')+'"/></svg>';
}
function card(c){
  let h='<div class="nb-card" data-key="'+c.layer+':'+c.neuron+'"><b>layer '+c.layer+' neuron '+c.neuron+'</b> · frequency '+num(c.frequency);
  for(const d of c.detector){
    h+='<div class="nb-det">k='+d.k+' detector (C='+d.coverage_size+', '+d.mass+' activations): triggers '+
      d.triggers.map(t=>'<span class="nb-trig">'+esc(t[0])+'</span> '+t[1]+'/'+t[2]).join(', ')+(d.more?' … +'+d.more:'');
    if(d.promoted) h+='<br>promotes '+esc(d.promoted)+'<br>suppresses '+esc(d.suppressed)+(d.suppresses===null||d.suppresses===undefined?'':' · '+(d.suppresses?'suppresses its triggers':'does not suppress its triggers'));
    h+='</div>';
  }
  if(c.positional){const p=c.positional;
    h+='<div class="nb-pos">positional: <span class="nb-type">'+esc(p.strength+' '+p.type.replace('_',' '))+'</span>, I = '+num(p.mi,4)+
      (p.corrected?' (beats its null)':'')+', mean fr '+num(p.mean_fr)+'<br>'+spark(p.curve)+'</div>';}
  return h+'</div>';
}
function summary(layer,neuron){
  const s=data.summary; if(!s||!(String(layer) in s.frequency)) return null;
  let h='<div class="nb-card" data-key="'+layer+':'+neuron+'"><b>layer '+layer+' neuron '+neuron+'</b> · frequency '+num(s.frequency[layer][neuron]);
  if(s.frequency[layer][neuron]===0) h+=' (dead)';
  if(String(layer) in s.mi) h+=' · I = '+num(s.mi[layer][neuron],4)+' (not positional)';
  for(const k in s.coverage){ if(String(layer) in s.coverage[k]) h+=' · C_'+k+' = '+s.coverage[k][layer][neuron]; }
  return h+' · not a detector</div>';
}
function find(text){
  const m=String(text).match(/(\d+)\D+(\d+)/), out=root.querySelector('.nb-result');
  if(!m){out.innerHTML='<p class="note">Type a layer and a neuron, e.g. 3 1270.</p>';return;}
  const layer=+m[1], neuron=+m[2], c=data.cards[layer+':'+neuron];
  if(c){out.innerHTML=card(c);return;}
  if(!data.layers.includes(layer)||neuron>=data.num_neurons){out.innerHTML='<p class="note nb-none">No such neuron: layers '+esc(data.layers.join(', '))+', neurons 0..'+(data.num_neurons-1)+'.</p>';return;}
  out.innerHTML=summary(layer,neuron)||'<p class="note nb-none">Layer '+layer+' neuron '+neuron+' is neither a detector nor positional, and this page carries no summary lines for a model this large: ask <code>fastneurons show STORE '+layer+' '+neuron+'</code>.</p>';
}
const box=root.querySelector('input.nb-search');
box.addEventListener('input',()=>find(box.value));
root.querySelector('.nb-cards').innerHTML=Object.values(data.cards).map(card).join('');
const h=decodeURIComponent(location.hash||''), m=h.match(/neuron=([^&]+)/);
if(m&&root.id===(h.match(/browser=([^&]+)/)||[0,root.id])[1]){box.value=m[1];find(m[1]);}
})();
"""

STYLE = """
.nb-card{border:1px solid #e1e4e8;border-radius:4px;padding:6px 10px;margin:6px 0;font-size:13px}
.nb-trig{background:#eef3fb;padding:0 3px;border-radius:3px;font-family:monospace}
.nb-cards{max-height:640px;overflow-y:auto}.nb-search{font-size:14px;padding:3px 6px;width:16em}
"""


def browser_html(data: dict, anchor: str) -> str:
    """The browser block for one store: search box, result slot, cards; its data and script inline."""
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")   # no "</script>" or "<!--" inside
    return (f'<div class="nb" id="browser-{anchor}"><p class="note">This page carries {data["carried"]}. '
            'Search any (layer, neuron) it carries; <code>#neuron=L:N</code> in the address opens one.</p>'
            '<input class="nb-search" type="search" placeholder="layer neuron, e.g. 0 10" aria-label="layer and neuron">'
            f'<div class="nb-result"></div><details><summary>All {len(data["cards"]):,} cards</summary>'
            f'<div class="nb-cards"></div></details><script type="application/json" class="nb-data">{blob}</script>'
            f"<script>{_SCRIPT}</script></div>")

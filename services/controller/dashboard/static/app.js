/*
 * HyCTAS dashboard: the caller's searches, live Pareto fronts, architectures, and fronts compared.
 *
 * Every byte of data comes from /api/v1 with the API key (kept in sessionStorage) as a Bearer
 * header; live updates come from /api/v1/events, read with fetch() because EventSource cannot
 * send headers. Charts are plotly.js (served from the installed `plotly` package); the
 * architecture view is plain DOM. window.hyctasDashboard exposes read-only state for tests.
 */
(() => {
  'use strict';

  const KEY_STORE = 'hyctas.apiKey';
  // Op codes of the official JSON (hyctas_core.search_space.OP_NAMES) and their one-letter names.
  const OPS = ['skip', 'conv', 'conv_downup', 'conv_2x_downup', 'sa'];
  const OP_LETTER = { skip: '-', conv: 'C', conv_downup: 'Z', conv_2x_downup: 'Z2', sa: 'A' };
  const OP_TITLE = {
    skip: 'skip', conv: 'light-weight conv', conv_downup: 'conv with down/up-sampling',
    conv_2x_downup: 'conv, 2x down/up-sampling', sa: 'memory-efficient self-attention',
  };
  const SCALES = [8, 16, 32];
  const COST_LABEL = { latency_ms: 'latency (ms)', gmacs: 'GMACs', params_m: 'params (M)' };
  const OBJECTIVE_COST = { latency: 'latency_ms', flops: 'gmacs', params: 'params_m' };
  const BRANCH_COLOUR = { 1: '#1f77b4', 2: '#ff7f0e', 3: '#2ca02c' };
  const FRONT_COLOUR = '#d62728';
  const WEBGL_ABOVE = 1000; // SVG scatter slows down past a few thousand points; WebGL does not
  const SEARCH_EVENTS = new Set(['generation', 'progress', 'job', 'search', 'verification']);
  const PLAY_STEP_MS = 700;
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'] };
  const DEPLOY_PATH = '/api/v1/models/{model_id}/deploy';

  const state = {
    key: sessionStorage.getItem(KEY_STORE),
    searches: new Map(), // id -> SearchPublic (+ _at: when fetched, for the running clocks)
    picked: new Set(), // ids ticked for comparison
    open: null, // the search page's data
    compare: null, // the comparison page's data
    stream: null, // AbortController of the event stream
    live: false,
    eventsSeen: 0,
    deployEnabled: false,
    renders: [], // {chart, points, type, ms, paint_ms}
    hovered: null,
    selected: null,
    timers: new Map(), // debounced refreshes
    retrains: new Map(), // job id -> status element
  };

  // -- small helpers ---------------------------------------------------------------------------
  const $ = (selector) => document.querySelector(selector);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const nextPaint = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const esc = (text) => String(text).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

  /** A DOM element; children are nodes or text (never parsed as HTML). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'style') Object.assign(node.style, value);
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else if (name === 'dataset') Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fmt(value, digits = 3) {
    return isNum(value) ? value.toFixed(digits) : '–';
  }

  function duration(seconds) {
    if (!isNum(seconds)) return '–';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
  }

  function flash(message, kind = 'error') {
    const box = $('#flash');
    box.textContent = message;
    box.className = kind;
    box.hidden = !message;
  }

  function show(view) {
    for (const name of ['login', 'searches', 'search', 'compare']) $(`#${name}-view`).hidden = name !== view;
    if (view !== 'search') stopPlay();
    $('#logout').hidden = !state.key;
    renderCrumbs(view);
  }

  function renderCrumbs(view) {
    const crumbs = [];
    if (view !== 'login') crumbs.push(el('a', { href: '#/' }, 'searches'));
    if (view === 'search' && state.open?.search) crumbs.push(el('span', {}, state.open.search.name));
    if (view === 'compare') crumbs.push(el('span', {}, 'compare'));
    $('#crumbs').replaceChildren(...crumbs.flatMap((c, i) => (i ? [' / ', c] : [c])));
  }

  // -- the API ---------------------------------------------------------------------------------
  class AuthError extends Error {}

  /** JSON from /api/v1 with the key; a 401 logs out (the key is wrong or revoked). */
  async function api(path, init = {}) {
    if (!state.key) throw new AuthError('not logged in');
    const headers = { Authorization: `Bearer ${state.key}`, Accept: 'application/json' };
    if (init.body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`/api/v1${path}`, { ...init, headers, cache: 'no-store' });
    if (res.status === 401) {
      logout('The API key was refused (unknown or revoked): log in again.');
      throw new AuthError('401');
    }
    const json = (res.headers.get('content-type') || '').includes('json') ? await res.json() : null;
    if (!res.ok) throw new Error(detailOf(json) || `${path}: HTTP ${res.status}`);
    return json;
  }

  function detailOf(body) {
    const detail = body && body.detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join('.')}: ${d.msg}`).join('; ');
    return '';
  }

  function reportError(err) {
    if (err instanceof AuthError) return;
    flash(err && err.message ? err.message : String(err));
  }

  // -- session ---------------------------------------------------------------------------------
  async function login(key) {
    state.key = key;
    $('#login-error').hidden = true;
    try {
      await api('/searches?limit=1');
    } catch (err) {
      if (!(err instanceof AuthError)) {
        state.key = null;
        showLoginError(err.message);
      }
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $('#api-key').value = '';
    startSession();
  }

  function startSession() {
    flash('');
    streamEvents();
    checkDeploy();
    route();
  }

  function logout(message = '') {
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    if (state.stream) state.stream.abort();
    state.stream = null;
    setLive(false);
    state.searches.clear();
    state.picked.clear();
    for (const id of ['scatter', 'hv-chart', 'overlay']) purge(id);
    state.open = null;
    state.compare = null;
    $('#searches-table tbody').replaceChildren();
    flash('');
    show('login');
    if (message) showLoginError(message);
  }

  function showLoginError(message) {
    const box = $('#login-error');
    box.textContent = message;
    box.hidden = false;
  }

  async function checkDeploy() {
    // Deploying needs a serving endpoint; enable the button only once the controller has one.
    try {
      const res = await fetch('/openapi.json', { cache: 'no-store' });
      const schema = res.ok ? await res.json() : {};
      state.deployEnabled = Boolean(schema.paths && schema.paths[DEPLOY_PATH]);
    } catch {
      state.deployEnabled = false;
    }
    const button = $('#deploy');
    if (button) setDeployButton(button);
  }

  // -- live updates ----------------------------------------------------------------------------
  function setLive(on) {
    state.live = on;
    const badge = $('#live');
    badge.textContent = on ? 'live' : 'offline';
    badge.className = on ? 'live on' : 'live off';
  }

  /** Reads /api/v1/events forever (reconnecting with back-off) while logged in. */
  async function streamEvents() {
    if (state.stream) state.stream.abort();
    const ctrl = new AbortController();
    state.stream = ctrl;
    let delay = 1000;
    let connectedBefore = false;
    while (state.key && !ctrl.signal.aborted) {
      try {
        const res = await fetch('/api/v1/events', {
          headers: { Authorization: `Bearer ${state.key}`, Accept: 'text/event-stream' },
          signal: ctrl.signal,
          cache: 'no-store',
        });
        if (res.status === 401) {
          logout('The API key was refused (unknown or revoked): log in again.');
          return;
        }
        if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
        setLive(true);
        delay = 1000;
        if (connectedBefore) refreshView(); // events sent while we were away are lost: catch up
        connectedBefore = true;
        await readEvents(res.body, onEvent);
      } catch (err) {
        if (ctrl.signal.aborted) return;
      }
      setLive(false);
      await sleep(delay * (1 + 0.3 * Math.random()));
      delay = Math.min(delay * 2, 30000);
    }
  }

  /** Parses a text/event-stream body: blocks split by blank lines, `event:` and `data:` fields. */
  async function readEvents(body, handle) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A lone CR at the end may be half of a CRLF: keep it until the next chunk.
      const keep = buffer.endsWith('\r') ? 1 : 0;
      let text = buffer.slice(0, buffer.length - keep).replace(/\r\n?/g, '\n');
      let end;
      while ((end = text.indexOf('\n\n')) >= 0) {
        dispatchBlock(text.slice(0, end), handle);
        text = text.slice(end + 2);
      }
      buffer = text + buffer.slice(buffer.length - keep);
    }
  }

  function dispatchBlock(block, handle) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue; // comments: ": connected", ": keepalive"
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) handle(type, data.join('\n'));
  }

  function onEvent(type, data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    state.eventsSeen += 1;
    if (event.job_id !== undefined && state.retrains.has(event.job_id) && event.state) {
      state.retrains.get(event.job_id).textContent = `retrain job #${event.job_id}: ${event.state}`;
    }
    if (!SEARCH_EVENTS.has(type)) return;
    let searchId = event.search_id;
    if (searchId === undefined && event.job_id !== undefined) searchId = searchOfJob(event.job_id);
    if (searchId !== undefined && state.searches.has(searchId)) debounce(`search:${searchId}`, () => refreshSearch(searchId));
    else if (searchId !== undefined || type === 'search') debounce('list', refreshList);
  }

  function searchOfJob(jobId) {
    for (const s of state.searches.values()) if (s.job && s.job.id === jobId) return s.id;
    return undefined;
  }

  function debounce(name, fn, ms = 150) {
    clearTimeout(state.timers.get(name));
    state.timers.set(name, setTimeout(() => fn().catch(reportError), ms));
  }

  async function refreshSearch(id) {
    const search = stamp(await api(`/searches/${id}`));
    state.searches.set(id, search);
    if (!$('#searches-view').hidden) renderList();
    if (state.open && state.open.id === id && !$('#search-view').hidden) await refreshOpen(state.open);
    if (state.compare && state.compare.ids.includes(id) && !$('#compare-view').hidden) await loadCompare(state.compare, [id]);
  }

  async function refreshList() {
    await loadSearches();
    if (!$('#searches-view').hidden) renderList();
  }

  function refreshView() {
    if (!state.key) return;
    route().catch(reportError);
  }

  // -- routing ---------------------------------------------------------------------------------
  async function route() {
    if (!state.key) {
      show('login');
      return;
    }
    const [page, arg] = location.hash.replace(/^#\/?/, '').split('/');
    flash('');
    try {
      if (page === 'search' && /^\d+$/.test(arg || '')) await openSearch(Number(arg));
      else if (page === 'compare') await openCompare((arg || '').split(',').filter((x) => /^\d+$/.test(x)).map(Number));
      else await openList();
    } catch (err) {
      reportError(err);
    }
  }

  // -- the searches list -----------------------------------------------------------------------
  function stamp(search) {
    search._at = performance.now();
    return search;
  }

  async function loadSearches() {
    const all = [];
    for (let offset = 0, count = Infinity; offset < count; ) {
      const page = await api(`/searches?limit=100&offset=${offset}`);
      count = page.count;
      all.push(...page.data.map(stamp));
      if (!page.data.length) break;
      offset += page.data.length;
    }
    state.searches = new Map(all.map((s) => [s.id, s]));
    for (const id of [...state.picked]) if (!state.searches.has(id)) state.picked.delete(id);
  }

  async function openList() {
    show('searches');
    await loadSearches();
    renderList();
  }

  function isRunning(search) {
    return search.state === 'created' || search.state === 'running';
  }

  function clocks(search) {
    const since = isRunning(search) ? (performance.now() - search._at) / 1000 : 0;
    const t = search.timings || {};
    return {
      elapsed: isNum(t.elapsed_s) ? t.elapsed_s + since : null,
      remaining: isNum(t.remaining_s) ? Math.max(0, t.remaining_s - since) : null,
    };
  }

  function renderList() {
    const body = $('#searches-table tbody');
    const rows = new Map([...body.rows].map((tr) => [Number(tr.dataset.searchId), tr]));
    const ordered = [...state.searches.values()].sort((a, b) => a.id - b.id);
    for (const search of ordered) {
      let tr = rows.get(search.id);
      if (!tr) tr = newRow(search);
      fillRow(tr, search);
      body.append(tr); // appending an existing row moves it: keeps id order
      rows.delete(search.id);
    }
    for (const tr of rows.values()) tr.remove();
    $('#no-searches').hidden = ordered.length > 0;
    $('#compare-selected').disabled = state.picked.size < 2;
  }

  function newRow(search) {
    const pick = el('input', {
      type: 'checkbox',
      class: 'compare-pick',
      'aria-label': `compare ${search.name}`,
      onchange: (e) => {
        if (e.target.checked) state.picked.add(search.id);
        else state.picked.delete(search.id);
        $('#compare-selected').disabled = state.picked.size < 2;
      },
    });
    pick.checked = state.picked.has(search.id);
    return el(
      'tr',
      { dataset: { searchId: String(search.id) } },
      el('td', {}, pick),
      el('td', { class: 'name' }, el('a', { href: `#/search/${search.id}` })),
      el('td', { class: 'status' }),
      el('td', { class: 'progress' }, el('progress', { max: 1, value: 0 }), el('span')),
      el('td', { class: 'hv num' }),
      el('td', { class: 'evaluated num' }),
      el('td', { class: 'objective' }),
      el('td', { class: 'elapsed num' }),
      el('td', { class: 'remaining num' }),
    );
  }

  function fillRow(tr, search) {
    const cell = (name) => tr.querySelector(`.${name}`);
    cell('name').firstChild.textContent = search.name;
    const status = [stateBadge(search.state)];
    if (search.waiting_for_device) {
      // Latency is timed only on the search's device class: it waits until such a node joins.
      status.push(el('span', { class: 'waiting', title: 'no node of this device class in the cluster' },
        `waiting for a ${search.waiting_for_device} node`));
    }
    cell('status').replaceChildren(...status);
    const bar = cell('progress').querySelector('progress');
    bar.max = Math.max(1, search.total_generations);
    bar.value = search.generation;
    cell('progress').querySelector('span').textContent = `${search.generation} / ${search.total_generations}`;
    cell('hv').textContent = fmt(search.hypervolume, 4);
    cell('evaluated').textContent = String(search.n_evaluated);
    cell('objective').textContent = search.objective;
    const { elapsed, remaining } = clocks(search);
    cell('elapsed').textContent = duration(elapsed);
    cell('remaining').textContent = duration(remaining);
  }

  function stateBadge(value) {
    return el('span', { class: `state state-${value}` }, value);
  }

  /** Running clocks: elapsed and remaining time tick between updates from the server. */
  function tick() {
    if (!$('#searches-view').hidden) {
      for (const tr of $('#searches-table tbody').rows) {
        const search = state.searches.get(Number(tr.dataset.searchId));
        if (!search || !isRunning(search)) continue;
        const { elapsed, remaining } = clocks(search);
        tr.querySelector('.elapsed').textContent = duration(elapsed);
        tr.querySelector('.remaining').textContent = duration(remaining);
      }
    }
    if (state.open && state.open.search && !$('#search-view').hidden && isRunning(state.open.search)) renderFacts();
  }

  // -- one search ------------------------------------------------------------------------------
  async function openSearch(id) {
    if (!state.open || state.open.id !== id) {
      stopPlay();
      for (const chart of ['scatter', 'hv-chart']) purge(chart);
      state.open = { id, search: null, gens: [], inds: [], seen: new Set(), maxGen: -1, gen: null, costKey: null };
      state.selected = null;
      $('#arch-panel').replaceChildren(el('p', { class: 'hint' }, 'Click a point to see its architecture.'));
      $('#search-title').textContent = `search ${id}`;
      $('#search-facts').replaceChildren();
    }
    show('search');
    const open = state.open;
    const t0 = performance.now();
    const [search, gens, inds] = await Promise.all([
      api(`/searches/${id}`),
      api(`/searches/${id}/generations`),
      api(`/searches/${id}/individuals`),
    ]);
    if (state.open !== open) return;
    open.fetchMs = performance.now() - t0;
    applySearch(open, search, gens.data, inds.data);
    await renderSearch();
  }

  /** Re-fetch the open search and only the individuals of generations it has not seen yet. */
  async function refreshOpen(open) {
    if (open.busy) {
      open.again = true;
      return;
    }
    open.busy = true;
    try {
      do {
        open.again = false;
        const [search, gens] = await Promise.all([api(`/searches/${open.id}`), api(`/searches/${open.id}/generations`)]);
        const fresh = [];
        for (let g = open.maxGen + 1; g < search.generation; g += 1) {
          fresh.push(...(await api(`/searches/${open.id}/individuals?generation=${g}`)).data);
        }
        if (state.open !== open) return;
        const before = `${open.inds.length}:${open.gens.length}:${open.search.hypervolume}`;
        applySearch(open, search, gens.data, fresh);
        // Progress events arrive every second or so while a generation evaluates: redraw the
        // charts only when a generation was committed, the facts (state, clocks) always.
        if (`${open.inds.length}:${open.gens.length}:${search.hypervolume}` !== before) await renderSearch();
        else {
          $('#search-state').replaceChildren(stateBadge(search.state));
          renderFacts();
        }
      } while (open.again);
    } finally {
      open.busy = false;
    }
  }

  function applySearch(open, search, gens, inds) {
    open.search = stamp(search);
    state.searches.set(search.id, search);
    open.gens = gens;
    open.searchCost = OBJECTIVE_COST[search.objective] || 'latency_ms';
    for (const ind of inds) {
      const key = `${ind.generation}:${ind.arch_hash}`;
      if (open.seen.has(key)) continue;
      open.seen.add(key);
      ind._hover = hoverText(ind);
      ind._index = open.inds.length; // the point's customdata: clicks find the individual by it
      open.inds.push(ind);
      open.maxGen = Math.max(open.maxGen, ind.generation);
    }
    if (!open.costKey) open.costKey = open.searchCost;
  }

  function lastGen(open) {
    return Math.max(open.maxGen, open.gens.length - 1, 0);
  }

  function hoverText(ind) {
    const o = ind.objectives || {};
    const branches = `${ind.num_branches} branch${ind.num_branches === 1 ? '' : 'es'}`;
    return [
      `<b>${esc(ind.arch_hash)}</b>`,
      `generation ${ind.generation + 1} · ${branches}`,
      `mIoU ${fmt(o.miou, 4)}`,
      `latency ${fmt(o.latency_ms, 2)} ms · ${fmt(o.gmacs, 2)} GMACs · ${fmt(o.params_m, 2)} M params`,
    ].join('<br>');
  }

  async function renderSearch() {
    const open = state.open;
    const search = open.search;
    renderCrumbs('search');
    $('#search-title').textContent = search.name;
    $('#search-state').replaceChildren(stateBadge(search.state));
    renderFacts();
    renderAxisOptions($('#cost-axis'), costKeysOf(open.inds), open.costKey);
    $('#gen-slider').max = String(lastGen(open));
    await renderCharts();
  }

  function renderFacts() {
    const search = state.open.search;
    const { elapsed, remaining } = clocks(search);
    const facts = [
      ['generation', `${search.generation} of ${search.total_generations}`],
      ['hypervolume', fmt(search.hypervolume, 4)],
      ['front', `${search.front_size} archs`],
      ['evaluated', `${search.n_evaluated} archs`],
      ['objective', `mIoU vs ${search.objective}`],
      ['elapsed', duration(elapsed)],
      ['remaining', duration(remaining)],
    ];
    if (search.job) facts.push(['job', `#${search.job.id} ${search.job.state}`]);
    if (search.verification) facts.push(['supernet fidelity', fidelityText(search.verification)]);
    if (search.error) facts.push(['error', search.error]);
    $('#search-facts').replaceChildren(
      ...facts.map(([k, v]) =>
        el('div', { class: `fact fact-${k.replace(/ /g, '-')}` }, el('dt', {}, k), el('dd', {}, v)),
      ),
    );
  }

  // The verification of a finished search: front points retrained briefly, and the rank
  // agreement (Kendall tau) of their supernet and retrained mIoU, with its K.
  function fidelityText(v) {
    if (v.state === 'succeeded') {
      if (v.kendall_tau === null) return `undefined over K=${v.k} (constant scores)`;
      return `Kendall \u03c4 ${v.kendall_tau.toFixed(2)} over K=${v.k} retrained front points`;
    }
    if (v.state === 'failed' || v.state === 'cancelled') return `${v.state} after ${v.done}/${v.k}: ${v.error || ''}`;
    return `${v.state}: ${v.done}/${v.k} front points retrained`;
  }

  function costKeysOf(inds) {
    const keys = Object.keys(COST_LABEL).filter((k) => inds.some((i) => isNum((i.objectives || {})[k])));
    return keys.length ? keys : ['latency_ms'];
  }

  function renderAxisOptions(select, keys, chosen) {
    const current = [...select.options].map((o) => o.value).join();
    if (current !== keys.join()) {
      select.replaceChildren(...keys.map((k) => el('option', { value: k }, COST_LABEL[k] || k)));
    }
    select.value = keys.includes(chosen) ? chosen : keys[0];
  }

  function selectedGen(open) {
    return open.gen === null ? lastGen(open) : Math.min(open.gen, lastGen(open));
  }

  /** Plottable individuals (finite mIoU and cost) of generations <= g. */
  function plottable(inds, g, key) {
    return inds.filter((i) => i.generation <= g && isNum(i.objectives.miou) && isNum(i.objectives[key]));
  }

  /** Non-dominated points (max mIoU, min cost), one per arch, by cost. */
  function paretoOf(inds, key) {
    const unique = new Map();
    for (const ind of inds) if (!unique.has(ind.arch_hash)) unique.set(ind.arch_hash, ind);
    const sorted = [...unique.values()].sort(
      (a, b) => a.objectives[key] - b.objectives[key] || b.objectives.miou - a.objectives.miou,
    );
    const front = [];
    let best = -Infinity;
    for (const ind of sorted) {
      if (ind.objectives.miou > best) {
        front.push(ind);
        best = ind.objectives.miou;
      }
    }
    return front;
  }

  /** The front of generation g: the stored one (its hashes) on the search's own axis, else computed. */
  function frontAt(open, shown, g, key) {
    const record = open.gens.find((r) => r.index === g);
    if (record && key === open.searchCost) {
      const byHash = new Map();
      for (const ind of shown) if (!byHash.has(ind.arch_hash)) byHash.set(ind.arch_hash, ind);
      const front = record.front.map((h) => byHash.get(h)).filter(Boolean);
      if (front.length === record.front.length) return front.sort((a, b) => a.objectives[key] - b.objectives[key]);
    }
    return paretoOf(shown, key);
  }

  async function renderCharts() {
    const open = state.open;
    const g = selectedGen(open);
    const key = open.costKey;
    $('#gen-slider').value = String(g);
    $('#gen-label').textContent = `generations 1-${g + 1} of ${open.search.total_generations}`;
    const shown = plottable(open.inds, g, key);
    const front = frontAt(open, shown, g, key);
    const onFront = new Set(front.map((i) => i.arch_hash));
    const type = open.inds.length > WEBGL_ABOVE ? 'scattergl' : 'scatter';
    const traces = [];
    for (const b of [1, 2, 3]) {
      const mine = shown.filter((i) => i.num_branches === b);
      if (!mine.length) continue;
      traces.push({
        type,
        mode: 'markers',
        meta: 'individuals',
        name: `${b} branch${b === 1 ? '' : 'es'}`,
        x: mine.map((i) => i.objectives[key]),
        y: mine.map((i) => i.objectives.miou),
        customdata: mine.map((i) => i._index),
        text: mine.map((i) => i._hover),
        hovertemplate: '%{text}<extra></extra>',
        marker: {
          color: BRANCH_COLOUR[b],
          size: type === 'scattergl' ? 6 : 8,
          opacity: 0.75,
          line: { color: '#222', width: mine.map((i) => (onFront.has(i.arch_hash) ? 1.5 : 0)) },
        },
      });
    }
    traces.push({
      type: 'scatter',
      mode: 'lines',
      meta: 'front',
      name: `Pareto front (${front.length})`,
      x: front.map((i) => i.objectives[key]),
      y: front.map((i) => i.objectives.miou),
      line: { shape: 'hv', color: FRONT_COLOUR, width: 2 },
      hoverinfo: 'skip',
    });
    const layout = {
      title: { text: `mIoU vs ${COST_LABEL[key] || key}: ${shown.length} sub-networks` },
      xaxis: { title: { text: COST_LABEL[key] || key }, zeroline: false },
      yaxis: { title: { text: 'mIoU' }, zeroline: false },
      hovermode: 'closest',
      legend: { orientation: 'h', y: -0.18 },
      margin: { l: 60, r: 20, t: 50, b: 70 },
      uirevision: `${open.id}:${key}`, // keep the user's zoom across live updates
    };
    await plot('scatter', traces, layout, shown.length);
    bindPointEvents();
    await renderHv(g);
  }

  async function renderHv(g) {
    const open = state.open;
    const gens = open.gens;
    const traces = [
      {
        type: 'scatter',
        mode: 'lines+markers',
        meta: 'hypervolume',
        x: gens.map((r) => r.index + 1),
        y: gens.map((r) => r.hypervolume),
        line: { color: '#444' },
        hovertemplate: 'generation %{x}<br>hypervolume %{y:.4f}<extra></extra>',
      },
    ];
    const layout = {
      title: { text: 'hypervolume per generation' },
      xaxis: { title: { text: 'generation' }, dtick: gens.length > 20 ? undefined : 1 },
      yaxis: { title: { text: 'hypervolume' } },
      shapes: gens.length
        ? [{ type: 'line', xref: 'x', yref: 'paper', x0: g + 1, x1: g + 1, y0: 0, y1: 1, line: { color: FRONT_COLOUR, dash: 'dot' } }]
        : [],
      margin: { l: 60, r: 20, t: 40, b: 45 },
      showlegend: false,
    };
    await plot('hv-chart', traces, layout, gens.length);
  }

  /** Plotly.react, timed (the call, then until two frames later: what the user waits for). */
  async function plot(id, traces, layout, points) {
    const div = $(`#${id}`);
    const t0 = performance.now();
    await Plotly.react(div, traces, layout, PLOT_CONFIG);
    const t1 = performance.now();
    await nextPaint();
    state.renders.push({ chart: id, points, type: traces[0] ? traces[0].type : null, ms: t1 - t0, paint_ms: performance.now() - t0 });
    if (state.renders.length > 500) state.renders.shift();
  }

  /** Empty a chart; its plotly listeners go with it. */
  function purge(id) {
    const div = $(`#${id}`);
    if (window.Plotly) Plotly.purge(div);
    delete div.dataset.bound;
  }

  function bindPointEvents() {
    const div = $('#scatter');
    if (div.dataset.bound) return;
    div.dataset.bound = '1';
    const individualOf = (event) => {
      const point = event && event.points && event.points.find((p) => p.data.meta === 'individuals');
      return point && state.open ? state.open.inds[point.customdata] : null;
    };
    div.on('plotly_hover', (event) => {
      const ind = individualOf(event);
      if (ind) state.hovered = { arch_hash: ind.arch_hash, generation: ind.generation };
    });
    div.on('plotly_click', (event) => {
      const ind = individualOf(event);
      if (ind) showArch(ind);
    });
  }

  // -- generations: select and animate ---------------------------------------------------------
  let playTimer = null;

  function stopPlay() {
    if (playTimer) clearTimeout(playTimer);
    playTimer = null;
    $('#play').textContent = 'Play';
  }

  function play() {
    const open = state.open;
    if (!open || !open.search) return;
    if (playTimer) {
      stopPlay();
      return;
    }
    $('#play').textContent = 'Pause';
    open.gen = 0;
    const step = async () => {
      await renderCharts();
      if (!playTimer) return;
      if (open.gen >= lastGen(open)) {
        open.gen = null; // back to following the latest generation
        stopPlay();
        return;
      }
      open.gen += 1;
      playTimer = setTimeout(() => step().catch(reportError), PLAY_STEP_MS);
    };
    playTimer = setTimeout(() => step().catch(reportError), 0);
  }

  // -- one architecture ------------------------------------------------------------------------
  /** Branches of an official-JSON arch: each cell's op, input/output stride and width. */
  function parseArch(arch) {
    return arch.lasts.map((last, b) => {
      const ops = arch.ops[b];
      let scale = 8;
      const cells = ops.map((code, i) => {
        const inScale = arch.paths ? SCALES[arch.paths[b][i]] : scale;
        const stride = arch.downs[b][i] ? 2 : 1;
        scale = inScale * stride;
        const width = i < ops.length - 1 ? arch.widths[b][i] : 1;
        return { index: i, op: OPS[code] || `op${code}`, inScale, outScale: scale, stride, width };
      });
      return { end: SCALES[last], cells };
    });
  }

  function showArch(ind) {
    state.selected = ind;
    const open = state.open;
    const o = ind.objectives || {};
    const branches = parseArch(ind.arch);
    const layers = branches.length ? branches[0].cells.length : 0;
    const metrics = [
      ['mIoU', fmt(o.miou, 4)],
      ['latency', `${fmt(o.latency_ms, 2)} ms`],
      ['GMACs', fmt(o.gmacs, 2)],
      ['params', `${fmt(o.params_m, 2)} M`],
    ];
    for (const [k, v] of Object.entries(o)) {
      if (!['miou', 'latency_ms', 'gmacs', 'params_m'].includes(k) && v !== null) metrics.push([k, isNum(v) ? String(Number(v.toPrecision(4))) : String(v)]);
    }
    const status = el('p', { id: 'retrain-status', class: 'hint', 'aria-live': 'polite' });
    const epochs = el('input', { id: 'retrain-epochs', type: 'number', min: 1, max: 2000, value: 10, 'aria-label': 'epochs' });
    const deploy = el('button', { id: 'deploy', type: 'button', onclick: () => deployArch(ind, status).catch((e) => { status.textContent = e.message; }) }, 'Deploy');
    setDeployButton(deploy);
    $('#arch-panel').replaceChildren(
      el('h2', {}, 'Architecture'),
      el('p', { class: 'arch-id' }, el('code', { class: 'arch-hash' }, ind.arch_hash)),
      el('p', { class: 'hint' }, `generation ${ind.generation + 1} · ${branches.length} branch${branches.length === 1 ? '' : 'es'} · ${layers} cells each · ${ind.status}`),
      el('dl', { class: 'metrics' }, ...metrics.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', { class: `metric-${k}` }, v)))),
      ...branches.map((branch, b) => branchView(branch, b, layers)),
      opLegend(),
      el(
        'div',
        { class: 'actions' },
        el('button', { id: 'export-json', type: 'button', onclick: () => exportArch(ind) }, 'Export JSON'),
        el('label', {}, 'epochs ', epochs),
        el('button', { id: 'retrain', type: 'button', onclick: () => retrain(ind, Number(epochs.value), status).catch((e) => { status.textContent = e.message; }) }, 'Retrain'),
        deploy,
      ),
      status,
      el('div', { id: 'served', 'aria-live': 'polite' }),
    );
    if (open) renderCrumbs('search');
    showServed(ind).catch(() => {});
  }

  // Where this architecture is served: what its replicas measured beside what the search predicted.
  async function showServed(ind) {
    if (!state.deployEnabled) return;
    const reported = (await api('/deployments')).data.filter((d) => d.serving_latency);
    const rows = [];
    for (const d of reported) {
      const model = await api(`/models/${d.model_id}`);
      if (model.arch_hash !== ind.arch_hash) continue;
      rows.push(servedRow(await api(`/deployments/${encodeURIComponent(d.name)}`)));
    }
    const box = $('#served');
    if (!box || state.selected !== ind) return; // another arch was opened meanwhile
    box.replaceChildren(...(rows.length ? [el('h3', {}, 'Served'), ...rows] : []));
  }

  function servedRow(d) {
    const l = d.latency;
    const m = l.measured;
    const where = `${m.backend || '?'} on ${m.device_class || m.device || '?'}, ${m.input_size.join('x')}`;
    const parts = [`${d.name}: ${fmt(m.p50_ms, 2)} ms measured (p50 of ${m.requests} requests, ${where})`];
    if (l.predicted) parts.push(`${fmt(l.predicted.latency_ms, 2)} ms predicted (${l.predicted.source || 'search'})`);
    if (l.error_pct !== null && l.error_pct !== undefined) parts.push(`error ${l.error_pct > 0 ? '+' : ''}${fmt(l.error_pct, 1)} %`);
    if (l.note) parts.push(l.note);
    return el('p', { class: 'served-latency', dataset: { deployment: d.name } }, parts.join(' \u00b7 '));
  }

  function branchView(branch, b, layers) {
    const attention = branch.cells.filter((c) => c.op === 'sa').map((c) => c.index + 1);
    const downs = branch.cells.filter((c) => c.stride === 2).map((c) => c.index + 1);
    const grid = el('div', {
      class: 'arch-grid',
      style: { gridTemplateColumns: `3.2em repeat(${layers}, minmax(2.3em, 1fr))` },
    });
    SCALES.forEach((scale, row) => {
      grid.append(el('div', { class: 'lane-label', style: { gridRow: String(row + 1), gridColumn: '1' } }, `1/${scale}`));
    });
    for (const cell of branch.cells) {
      const row = SCALES.indexOf(cell.inScale) + 1;
      const title = `cell ${cell.index + 1}: ${OP_TITLE[cell.op] || cell.op}, width ×${cell.width.toFixed(2)}, `
        + `stride ${cell.stride} (1/${cell.inScale} → 1/${cell.outScale})`;
      grid.append(
        el(
          'div',
          {
            class: `cell op-${cell.op}${cell.stride === 2 ? ' down' : ''}`,
            title,
            dataset: { op: cell.op, scale: String(cell.inScale), width: cell.width.toFixed(3) },
            style: { gridRow: String(row), gridColumn: String(cell.index + 2) },
          },
          el('span', { class: 'op' }, OP_LETTER[cell.op] || '?', cell.stride === 2 ? '↓' : ''),
          el('span', { class: 'w' }, cell.width.toFixed(2).replace(/^0/, '')),
        ),
      );
    }
    return el(
      'div',
      { class: 'branch', dataset: { end: String(branch.end) } },
      el('h3', {}, `branch ${b + 1} → output 1/${branch.end}`),
      el(
        'p',
        { class: 'hint' },
        `attention at cell${attention.length === 1 ? '' : 's'} ${attention.length ? attention.join(', ') : 'none'}; `
          + `down-sampling at ${downs.length ? downs.join(', ') : 'none'}`,
      ),
      grid,
    );
  }

  function opLegend() {
    return el(
      'ul',
      { class: 'op-legend' },
      ...OPS.map((op) => el('li', {}, el('span', { class: `cell op-${op}` }, OP_LETTER[op]), ` ${OP_TITLE[op]}`)),
      el('li', {}, el('span', { class: 'cell down' }, '↓'), ' stride 2 (to the next scale)'),
    );
  }

  function exportArch(ind) {
    const blob = new Blob([`${JSON.stringify(ind.arch, null, 2)}\n`], { type: 'application/json' });
    const url = URL.createObjectURL(blob);
    const name = state.open && state.open.search ? `${state.open.search.name}-${ind.arch_hash}` : ind.arch_hash;
    const a = el('a', { href: url, download: `${name}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function modelName(search, hash) {
    const raw = `${search.name}-${hash.slice(0, 8)}`.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^[^A-Za-z0-9]+/, '');
    return (raw || `arch-${hash.slice(0, 8)}`).slice(0, 100);
  }

  async function retrain(ind, epochs, status) {
    const search = state.open.search;
    const body = {
      archs: [{ name: modelName(search, ind.arch_hash), search_id: search.id, arch_hash: ind.arch_hash }],
      epochs: Number.isInteger(epochs) && epochs > 0 ? epochs : 10,
    };
    if (search.supernet_id !== null && search.supernet_id !== undefined) body.supernet_id = search.supernet_id;
    else if (search.config && search.config.dataset) body.dataset = search.config.dataset;
    status.textContent = 'submitting…';
    const res = await api('/models', { method: 'POST', body: JSON.stringify(body) });
    const model = res.data[0];
    status.textContent = `retrain job #${res.job_id} queued (model #${model.id}, ${model.name})`;
    status.dataset.jobId = String(res.job_id);
    state.retrains.set(res.job_id, status);
  }

  function setDeployButton(button) {
    button.disabled = !state.deployEnabled;
    button.title = state.deployEnabled ? 'serve the retrained model of this architecture' : 'serving: coming';
  }

  async function deployArch(ind, status) {
    // Serving takes a retrained model (with a checkpoint), not an arch: find this arch's newest one.
    let model = null;
    for (let offset = 0, count = Infinity; offset < count; ) {
      const page = await api(`/models?limit=100&offset=${offset}`);
      count = page.count;
      for (const m of page.data) if (m.arch_hash === ind.arch_hash && m.state === 'succeeded' && m.checkpoint_uri) model = m;
      if (!page.data.length) break;
      offset += page.data.length;
    }
    if (!model) {
      status.textContent = 'no retrained model of this architecture yet: retrain it first';
      return;
    }
    status.textContent = 'deploying…';
    const deployment = await api(`/models/${model.id}/deploy`, { method: 'POST', body: '{}' });
    status.textContent = `deployment ${deployment.name} of model #${model.id}: ${deployment.state} (route ${deployment.route})`;
  }

  // -- comparing fronts ------------------------------------------------------------------------
  async function openCompare(ids) {
    show('compare');
    if (!state.searches.size) await loadSearches();
    const cmp = { ids, pareto: new Map(), inds: new Map(), key: null };
    state.compare = cmp;
    if (ids.length === 0) {
      $('#compare-list').replaceChildren(el('li', {}, 'Tick two or more searches in the list to compare them.'));
      purge('overlay');
      return;
    }
    await loadCompare(cmp, ids);
  }

  async function loadCompare(cmp, ids) {
    const results = await Promise.all(ids.map((id) => Promise.all([api(`/searches/${id}`), api(`/searches/${id}/pareto`)])));
    if (state.compare !== cmp) return;
    ids.forEach((id, i) => {
      const [search, pareto] = results[i];
      state.searches.set(id, stamp(search));
      cmp.pareto.set(id, pareto);
      cmp.inds.delete(id); // stale: fetched again if another axis needs it
    });
    if (!cmp.key) cmp.key = cmp.pareto.get(cmp.ids[0]).cost_key;
    await renderOverlay(cmp);
  }

  /** Each search's front on `key`: its stored front if that is its own axis, else computed. */
  async function frontsOn(cmp, key) {
    const fronts = [];
    for (const id of cmp.ids) {
      const pareto = cmp.pareto.get(id);
      if (pareto.cost_key === key) {
        fronts.push([id, pareto.data.filter((i) => isNum(i.objectives[key]) && isNum(i.objectives.miou))]);
        continue;
      }
      if (!cmp.inds.has(id)) cmp.inds.set(id, (await api(`/searches/${id}/individuals`)).data);
      const all = cmp.inds.get(id).filter((i) => isNum(i.objectives[key]) && isNum(i.objectives.miou));
      fronts.push([id, paretoOf(all, key)]);
    }
    return fronts;
  }

  async function renderOverlay(cmp) {
    const keys = [...new Set([...cmp.pareto.values()].flatMap((p) => costKeysOf(p.data)))];
    renderAxisOptions($('#compare-axis'), keys, cmp.key);
    const key = $('#compare-axis').value;
    cmp.key = key;
    const fronts = await frontsOn(cmp, key);
    if (state.compare !== cmp) return;
    const traces = fronts.map(([id, front]) => {
      const search = state.searches.get(id);
      const sorted = [...front].sort((a, b) => a.objectives[key] - b.objectives[key]);
      return {
        type: 'scatter',
        mode: 'lines+markers',
        meta: 'front',
        name: esc(search ? search.name : `search ${id}`),
        x: sorted.map((i) => i.objectives[key]),
        y: sorted.map((i) => i.objectives.miou),
        text: sorted.map((i) => `${esc(search ? search.name : id)}<br>${hoverText(i)}`),
        hovertemplate: '%{text}<extra></extra>',
        line: { shape: 'hv', width: 2 },
        marker: { size: 7 },
      };
    });
    const layout = {
      title: { text: `Pareto fronts: mIoU vs ${COST_LABEL[key] || key}` },
      xaxis: { title: { text: COST_LABEL[key] || key }, zeroline: false },
      yaxis: { title: { text: 'mIoU' }, zeroline: false },
      hovermode: 'closest',
      legend: { orientation: 'h', y: -0.18 },
      margin: { l: 60, r: 20, t: 50, b: 70 },
    };
    await plot('overlay', traces, layout, traces.reduce((n, t) => n + t.x.length, 0));
    $('#compare-list').replaceChildren(
      ...fronts.map(([id, front]) => {
        const s = state.searches.get(id);
        return el(
          'li',
          { dataset: { searchId: String(id) } },
          el('a', { href: `#/search/${id}` }, s ? s.name : `search ${id}`),
          `: ${front.length} archs on the front, hypervolume ${fmt(s && s.hypervolume, 4)} (on ${s ? s.objective : '?'}), generation ${s ? `${s.generation} of ${s.total_generations}` : '?'}`,
        );
      }),
    );
  }

  // -- wiring ----------------------------------------------------------------------------------
  function init() {
    $('#login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('#api-key').value.trim();
      if (key) login(key).catch(reportError);
    });
    $('#logout').addEventListener('click', () => logout());
    $('#compare-selected').addEventListener('click', () => {
      location.hash = `#/compare/${[...state.picked].sort((a, b) => a - b).join(',')}`;
    });
    $('#cost-axis').addEventListener('change', (e) => {
      if (!state.open) return;
      state.open.costKey = e.target.value;
      renderCharts().catch(reportError);
    });
    $('#gen-slider').addEventListener('input', (e) => {
      if (!state.open) return;
      stopPlay();
      const g = Number(e.target.value);
      state.open.gen = g >= lastGen(state.open) ? null : g; // at the end: follow new generations
      renderCharts().catch(reportError);
    });
    $('#play').addEventListener('click', play);
    $('#compare-axis').addEventListener('change', (e) => {
      if (!state.compare) return;
      state.compare.key = e.target.value;
      renderOverlay(state.compare).catch(reportError);
    });
    window.addEventListener('hashchange', () => route());
    setInterval(tick, 1000);
    if (!window.Plotly) {
      flash('plotly.js did not load (/dashboard/plotly.min.js): install the plotly package on the controller.');
    }
    if (state.key) startSession();
    else show('login');
  }

  window.hyctasDashboard = Object.freeze({
    get live() { return state.live; },
    get eventsSeen() { return state.eventsSeen; },
    get renders() { return state.renders.slice(); },
    get hovered() { return state.hovered; },
    get selected() { return state.selected && { arch_hash: state.selected.arch_hash, generation: state.selected.generation }; },
    get openSearch() { return state.open ? state.open.id : null; },
    get deployEnabled() { return state.deployEnabled; },
    /** What a chart plots: traces, and points of the individuals (or front) traces. */
    plotted(id = 'scatter') {
      const data = ($(`#${id}`) || {}).data || [];
      const meta = id === 'overlay' ? 'front' : 'individuals';
      const mine = data.filter((t) => t.meta === meta);
      return {
        traces: data.length,
        points: mine.reduce((n, t) => n + t.x.length, 0),
        types: [...new Set(mine.map((t) => t.type))],
        names: mine.map((t) => t.name),
        lengths: mine.map((t) => t.x.length),
      };
    },
  });

  init();
})();

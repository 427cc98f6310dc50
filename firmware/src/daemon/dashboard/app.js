// DeepTIRP Edge station dashboard. Plain JS, no frameworks, no external assets.
// Every value from the box (patient names come from DICOM headers) goes into the page
// through textContent, never innerHTML.
'use strict';
(function () {
  // The token, if the page was opened with ?token=, is now in an HttpOnly cookie:
  // keep it out of the address bar, history and bookmarks.
  if (/[?&]token=/.test(location.search)) {
    history.replaceState(null, '', location.pathname);
  }

  var MAX_ROWS = 200;
  var page = document.body.getAttribute('data-page');
  var main = document.getElementById('main');
  var msg = document.getElementById('msg');
  var live = document.getElementById('live');

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function say(text) {
    msg.textContent = text || '';
    msg.hidden = !text;
  }
  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '—';
    var d = new Date(ms), now = new Date();
    var t = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (d.toDateString() !== now.toDateString()) {
      t = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + t;
    }
    return t;
  }
  function pct(p) {
    return (p === null || p === undefined) ? '—' : (p * 100).toFixed(1) + ' %';
  }
  function ms(v) {
    return (v === null || v === undefined) ? '—' : (v >= 10000 ? (v / 1000).toFixed(1) + ' s' : Math.round(v) + ' ms');
  }
  function dur(s) {
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + ' d ' : '') + (d || h ? h + ' h ' : '') + m + ' min';
  }
  function opt(v) { return (v === null || v === undefined || v === '') ? '—' : v; }
  function flagClass(s) {
    if (s.state === 'queued') return 'queued';
    if (s.state === 'failed') return 'failed';
    if (s.pbt === true) return 'pbt';
    if (s.pbt === false) return 'inf';
    return 'neutral';
  }
  function flagText(s) {
    if (s.state === 'queued') return 'Analysing…';
    if (s.state === 'failed') return 'Analysis failed';
    return s.flag || 'No flag';
  }
  function studyUrl(id) { return '/studies/' + encodeURIComponent(id); }
  function heatUrl(s) {
    return '/api/studies/' + encodeURIComponent(s.id) + '/heatmap.png?v=' + (s.done_unix_ms || 0);
  }
  function getJSON(url) {
    return fetch(url, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
      if (r.status === 401) throw new Error('Not authorised: open the dashboard with its token (?token=…).');
      if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
      return r.json();
    });
  }

  // Live updates: one EventSource per page; on a reconnect (or a 'resync') the page
  // refetches, since events may have been missed meanwhile.
  function connect(onStudy, onResync) {
    if (!window.EventSource) { live.textContent = 'no live updates'; return; }
    var opened = false;
    var es = new EventSource('/api/events');
    es.onopen = function () {
      live.textContent = 'live';
      live.className = 'live on';
      if (opened) onResync();
      opened = true;
    };
    es.onerror = function () {
      live.textContent = 'reconnecting…';
      live.className = 'live off';
    };
    es.addEventListener('study', function (e) {
      var s;
      try { s = JSON.parse(e.data); } catch (err) { return; }
      onStudy(s);
    });
    es.addEventListener('resync', function () { onResync(); });
  }

  // ---- list page -------------------------------------------------------------------
  function listPage() {
    var list = el('ol', 'studies');
    list.id = 'studies';
    main.appendChild(list);
    var known = {};

    function row(s) {
      var li = el('li', 'study ' + flagClass(s));
      li.setAttribute('data-id', s.id);
      li.setAttribute('data-received', String(s.received_unix_ms));
      var a = el('a', 'row');
      a.href = studyUrl(s.id);
      var thumb = el('div', 'thumb');
      if (s.has_heatmap) {
        var img = el('img');
        img.alt = 'heat-map';
        img.loading = 'lazy';
        img.src = heatUrl(s);
        thumb.appendChild(img);
      } else {
        thumb.appendChild(el('span', 'nothumb', s.state === 'queued' ? '…' : 'no map'));
      }
      a.appendChild(thumb);
      var mid = el('div', 'mid');
      mid.appendChild(el('div', 'flag', flagText(s)));
      var who = el('div', 'who');
      who.appendChild(el('span', 'pname', opt(s.patient_name)));
      who.appendChild(el('span', 'pid', 'ID ' + opt(s.patient_id)));
      if (s.body_part) who.appendChild(el('span', 'part', s.body_part));
      mid.appendChild(who);
      if (s.state === 'failed' && s.error) mid.appendChild(el('div', 'err', s.error));
      a.appendChild(mid);
      var right = el('div', 'right');
      right.appendChild(el('div', 'prob', s.state === 'done' ? pct(s.probability) : ''));
      right.appendChild(el('div', 'time', fmtTime(s.received_unix_ms)));
      right.appendChild(el('div', 'src', s.source));
      a.appendChild(right);
      li.appendChild(a);
      return li;
    }
    function upsert(s) {
      var fresh = row(s);
      var old = known[s.id];
      if (old && old.parentNode) {
        list.replaceChild(fresh, old);
      } else {
        // Newest first by received time.
        var before = null, kids = list.children;
        for (var i = 0; i < kids.length; i++) {
          if (Number(kids[i].getAttribute('data-received')) <= s.received_unix_ms) { before = kids[i]; break; }
        }
        list.insertBefore(fresh, before);
      }
      known[s.id] = fresh;
      while (list.children.length > MAX_ROWS) {
        var last = list.lastElementChild;
        delete known[last.getAttribute('data-id')];
        list.removeChild(last);
      }
      say(list.children.length ? '' : 'No studies yet.');
    }
    function load() {
      return getJSON('/api/studies').then(function (v) {
        list.textContent = '';
        known = {};
        for (var i = v.length - 1; i >= 0; i--) upsert(v[i]);
        say(v.length ? '' : 'No studies yet: results appear here as they arrive.');
        document.body.setAttribute('data-loaded', '1');
      }).catch(function (e) { say(e.message); });
    }
    connect(upsert, load);
    load();
  }

  // ---- study page ------------------------------------------------------------------
  function studyPage() {
    var id = decodeURIComponent(location.pathname.replace(/^\/studies\//, ''));
    var box = el('div', 'detail');
    main.appendChild(box);
    function render(s) {
      box.textContent = '';
      box.className = 'detail ' + flagClass(s);
      document.title = 'DeepTIRP Edge · ' + flagText(s) + ' · NOT FOR DIAGNOSTIC USE';
      box.appendChild(el('div', 'bigflag', flagText(s)));
      if (s.state === 'done') box.appendChild(el('div', 'bigprob', 'probability ' + pct(s.probability)));
      var cols = el('div', 'cols');
      var fig = el('figure', 'heat');
      if (s.has_heatmap) {
        var img = el('img');
        img.alt = 'heat-map overlay';
        img.src = heatUrl(s);
        fig.appendChild(img);
        fig.appendChild(el('figcaption', null, 'Heat-map: where the ensemble looked. NOT FOR DIAGNOSTIC USE.'));
      } else {
        fig.appendChild(el('div', 'nothumb big', s.state === 'queued' ? 'analysing…' : 'no heat-map'));
      }
      cols.appendChild(fig);
      var dl = el('dl', 'fields');
      var rows = [
        ['Patient name', opt(s.patient_name)],
        ['Patient ID', opt(s.patient_id)],
        ['Accession', opt(s.accession)],
        ['Body part', opt(s.body_part)],
        ['State', s.state],
        ['Flag', opt(s.flag)],
        ['Primary bone tumour', s.pbt === null || s.pbt === undefined ? '—' : (s.pbt ? 'yes' : 'no')],
        ['Probability', pct(s.probability)],
        ['Threshold', pct(s.threshold)],
        ['Received', fmtTime(s.received_unix_ms)],
        ['Done', fmtTime(s.done_unix_ms)],
        ['Latency', ms(s.latency_ms)],
        ['Source', s.source],
        ['Bundle', opt(s.bundle)],
        ['Backend', opt(s.backend)],
        ['Error', opt(s.error)],
        ['Study id', s.id]
      ];
      rows.forEach(function (r) {
        dl.appendChild(el('dt', null, r[0]));
        dl.appendChild(el('dd', null, r[1]));
      });
      cols.appendChild(dl);
      box.appendChild(cols);
      say('');
    }
    function load() {
      return getJSON('/api/studies/' + encodeURIComponent(id)).then(render).catch(function (e) {
        say(/404/.test(e.message) ? 'This study is no longer kept on the box.' : e.message);
      });
    }
    connect(function (s) { if (s.id === id) render(s); }, load);
    load();
  }

  // ---- status page -----------------------------------------------------------------
  function statusPage() {
    var box = el('div', 'status');
    main.appendChild(box);
    function section(title, rows) {
      var sec = el('section');
      sec.appendChild(el('h2', null, title));
      var dl = el('dl', 'fields');
      rows.forEach(function (r) {
        dl.appendChild(el('dt', null, r[0]));
        dl.appendChild(el('dd', null, r[1]));
      });
      sec.appendChild(dl);
      box.appendChild(sec);
    }
    function val(v) {
      if (v === null || v === undefined) return '—';
      if (typeof v === 'object') return JSON.stringify(v);
      return String(v);
    }
    function render(st) {
      box.textContent = '';
      section('Box', [
        ['Board', opt(st.board)],
        ['Device', opt(st.device_id)],
        ['Firmware', opt(st.firmware_version)],
        ['Uptime', dur(st.uptime_s || 0)]
      ]);
      section('Model', [
        ['Bundle', opt(st.bundle)],
        ['Slot', opt(st.slot)],
        ['Backend', opt(st.backend)]
      ]);
      var l = st.latency || {};
      section('Work', [
        ['DICOM', opt(st.dicom)],
        ['Queue depth', val(st.queue_depth)],
        ['Outbox depth', val(st.outbox_depth)],
        ['Latency p50', ms(l.p50_ms)],
        ['Latency p95', ms(l.p95_ms)],
        ['Latency max', ms(l.max_ms)],
        ['Latency over', (l.n || 0) + ' studies'],
        ['Studies kept', val(st.studies_kept)],
        ['Live dashboards', val(st.live_clients)]
      ]);
      var extra = st.extra || {};
      var keys = Object.keys(extra).sort();
      if (keys.length) section('Counters', keys.map(function (k) { return [k, val(extra[k])]; }));
      say('');
      document.body.setAttribute('data-loaded', '1');
    }
    function load() {
      return getJSON('/api/status').then(render).catch(function (e) { say(e.message); });
    }
    connect(function () { load(); }, load);
    load();
    setInterval(load, 2000);
  }

  if (page === 'list') listPage();
  else if (page === 'study') studyPage();
  else if (page === 'status') statusPage();
})();

// The portal's entry: takes the session from the link, routes `#/...` to a screen, and shows
// every refusal of the API in plain words.

import { adoptToken, call, claims, ApiError } from './api.js';
import { h, announce } from './dom.js';
import { listScreen, createScreen, endpointScreen, editScreen, headersScreen } from './endpoints.js';
import { catalogScreen } from './catalog.js';

const main = document.getElementById('main');
const alertBox = document.getElementById('alert');
const token = adoptToken();

/** What every screen gets: the API, the error banner, navigation. */
const app = {
  token,
  api: (method, path, body) => call(token, method, path, body),
  fail(error) {
    const text = (error && error.text) || 'Something went wrong in the page.';
    if (!(error && error.text)) console.error(error);
    if (error instanceof ApiError && error.sessionEnded) return ended(text, error.code);
    alertBox.textContent = text;
    alertBox.dataset.code = error.code || '';
    alertBox.hidden = false;
    // Long forms (create) end far below the banner: bring it into sight.
    alertBox.scrollIntoView({ block: 'nearest' });
    return undefined;
  },
  clear() {
    alertBox.hidden = true;
    alertBox.textContent = '';
  },
  say: announce,
  go(route) {
    if (location.hash === route) render();
    else location.hash = route;
  },
  events: null,
  /** The event catalog, read once per page load. */
  async catalog() {
    if (!app.events) app.events = await app.api('GET', '/event-types');
    return app.events;
  },
};

/** The session is gone: say why, and show nothing else. */
function ended(text, code) {
  app.clear();
  main.replaceChildren(
    h('h1', { tabindex: '-1', id: 'ended', 'data-code': code || 'none' }, 'Session ended'),
    h('p', { class: 'alert', role: 'alert' }, text));
  document.getElementById('ended').focus();
}

function sessionLine() {
  const line = document.getElementById('session');
  const c = token && claims(token);
  if (!c) return;
  line.replaceChildren(`Signed in as ${c.consumer} until ${c.expires.toLocaleString()} `,
    c.readOnly ? h('strong', { class: 'badge', id: 'read-only' }, 'Read-only') : '');
}

const ROUTES = [
  [/^#\/?$/, () => listScreen(app)],
  [/^#\/new$/, () => createScreen(app)],
  [/^#\/catalog$/, () => catalogScreen(app)],
  [/^#\/endpoints\/([A-Za-z0-9_-]+)$/, (m) => endpointScreen(app, m[1])],
  [/^#\/endpoints\/([A-Za-z0-9_-]+)\/edit$/, (m) => editScreen(app, m[1])],
  [/^#\/endpoints\/([A-Za-z0-9_-]+)\/headers$/, (m) => headersScreen(app, m[1])],
];

let rendering = 0;
async function render() {
  const mine = ++rendering;
  app.clear();
  const hash = location.hash || '#/';
  const found = ROUTES.map(([re, screen]) => [re.exec(hash), screen]).find(([m]) => m);
  try {
    const view = found ? await found[1](found[0]) : h('p', {}, 'No such page.');
    if (mine !== rendering) return;
    main.replaceChildren(view);
    const heading = main.querySelector('h1');
    if (heading) {
      heading.tabIndex = -1;
      heading.focus();
      document.title = `${heading.textContent} · ${document.querySelector('.brand').textContent}`;
    }
    for (const link of document.querySelectorAll('nav a')) {
      link.toggleAttribute('aria-current', link.getAttribute('href') === hash);
    }
    if (!performance.getEntriesByName('portal-ready').length) performance.mark('portal-ready');
  } catch (error) {
    if (mine !== rendering) return;
    main.replaceChildren(h('h1', {}, 'Could not load this page'));
    app.fail(error);
  }
}

window.addEventListener('hashchange', () => {
  // A new link opened in this tab: take its session, and start again with it.
  if (/token=pws_/.test(location.hash)) {
    adoptToken();
    location.reload();
    return;
  }
  render();
});
sessionLine();
render();

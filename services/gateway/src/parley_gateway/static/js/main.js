// Shows one page at a time (from the URL's #hash) and loads each page's module once, when
// it is first shown. Pages share nothing but the small client in api.js.

/** @typedef {() => Promise<{mount?: (root: HTMLElement) => Promise<void>}>} PageLoader imports a page's module */

// A Map, not an object: `#toString` or `#constructor` must not find a "page" every object has.
/** @type {Map<string, PageLoader>} */
const PAGES = new Map([
  ['talk', () => import('./conversation.js')],
  ['voices', () => import('./voices.js')],
  ['dialogue', () => import('./dialogue.js')],
  ['speech', () => import('./playground.js')],
  ['monitor', () => import('./monitor.js')],
]);
/** @type {Map<string, Promise<void>>} */
const loaded = new Map(); // page name -> Promise of its module

function show() {
  const name = PAGES.has(location.hash.slice(1)) ? location.hash.slice(1) : 'talk';
  for (const section of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('[data-page]'))) {
    section.hidden = section.dataset.page !== name;
  }
  for (const link of document.querySelectorAll('nav.tabs a')) {
    if (link.getAttribute('href') === `#${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (!loaded.has(name)) {
    const section = /** @type {HTMLElement} */ (document.querySelector(`[data-page="${name}"]`));
    const load = /** @type {PageLoader} */ (PAGES.get(name));
    loaded.set(
      name,
      load().then((page) => (page.mount ? page.mount(section) : undefined)),
    );
  }
  const page = /** @type {Promise<void>} */ (loaded.get(name));
  page.then(() => document.body.setAttribute('data-ready', name));
}

window.addEventListener('hashchange', show);
show();

// The talk page's error banners. An `outage` banner tells of something that keeps the page
// from its session (the connection, the server, a stalled link): one at a time of each kind,
// removed once the page has its session again. Others stay until dismissed (the last few).

const MAX_BANNERS = 5;

/**
 * @typedef {object} Banners
 * @property {(code: string, message: string, options?: {outage?: boolean, key?: string}) => void} add
 *   `key`: the outage's kind, by default the code
 * @property {(key?: string) => void} removeOutages of one kind, or all of them
 */

/**
 * @param {HTMLUListElement} list
 * @returns {Banners}
 */
export function createBanners(list) {
  /** @type {Banners['removeOutages']} */
  function removeOutages(key) {
    for (const li of /** @type {NodeListOf<HTMLLIElement>} */ (list.querySelectorAll('li[data-outage]'))) {
      if (key === undefined || li.dataset.outage === key) li.remove();
    }
  }

  /** @type {Banners['add']} */
  function add(code, message, { outage = false, key = code } = {}) {
    const li = document.createElement('li');
    if (outage) {
      removeOutages(key);
      li.dataset.outage = key;
    }
    const text = document.createElement('span');
    text.textContent = code ? `${code}: ${message}` : message;
    const dismiss = document.createElement('button');
    dismiss.type = 'button';
    dismiss.className = 'dismiss';
    dismiss.textContent = '×';
    dismiss.setAttribute('aria-label', 'Dismiss error');
    dismiss.addEventListener('click', () => li.remove());
    li.append(text, dismiss);
    list.append(li);
    while (list.children.length > MAX_BANNERS) /** @type {Element} */ (list.firstElementChild).remove();
  }

  return { add, removeOutages };
}
